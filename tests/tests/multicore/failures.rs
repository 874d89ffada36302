//! How each way a task can fail is reported, and the pool survives it.

use crate::prelude::*;

pub(crate) fn panic_is_reported_and_the_worker_survives() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let before = d.wait_for_workers(WAIT).ok_or("not ready")?;
    let id = d.run(explode, "kaboom".into());
    let r = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?.remove(0);
    match r.decode_as(explode) {
        Err(e @ TaskError::Panicked { .. }) => {
            let text = e.to_string();
            let TaskError::Panicked { message, location, ctx, .. } = e else { unreachable!() };
            check(message == "kaboom", format!("message {message:?}"))?;
            let location = location.unwrap_or_default();
            check(location.contains("multicore/tasks.rs"), format!("location {location:?}"))?;
            // The task's own stderr is quoted; the panic report is in the error, not in there.
            check(ctx.stderr_tail == "about to panic", format!("tail {:?}", ctx.stderr_tail))?;
            check(r.run.stderr.to_text() == "about to panic\n", "captured stderr")?;
            check(text.contains("panicked at") && text.contains("kaboom"), text)?;
        }
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    check(d.status().ready_pids == before, "a panic must not cost a worker")?;
    check(one(&d, d.run(add, (2, 3)))?.map_err(fail)? == 5, "the pool still works")
}

pub(crate) fn returned_error_is_reported() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    match one(&d, d.run(refuse, "no thanks".into()))? {
        Err(e @ TaskError::Returned { .. }) => {
            check(e.to_string().contains("no thanks"), format!("{e}"))?;
            check(e.to_string().contains("`refuse`"), format!("{e}"))
        }
        other => Err(format!("expected Returned, got {other:?}").into()),
    }
}

fn crash(
    task: impl Fn(&MulticoreDispatcher) -> blitzen::TaskId<()>,
    expect: ExitReason,
    stderr: &str,
) -> Result<(), Failed> {
    let d = dispatcher(2)?;
    d.wait_for_workers(WAIT).ok_or("not ready")?;
    match one(&d, task(&d))? {
        Err(TaskError::WorkerCrashed { exit, ctx, .. }) => {
            check(exit == expect, format!("exit {exit:?}, expected {expect:?}"))?;
            check(ctx.stderr_tail.contains(stderr), format!("stderr tail {:?}", ctx.stderr_tail))?;
            let pid = ctx.worker.ok_or("no worker in the error")?.pid;
            back_to_full_strength(&d, 2, pid)?;
        }
        other => return Err(format!("expected a crash, got {other:?}").into()),
    }
    check(one(&d, d.run(add, (1, 1)))?.map_err(fail)? == 2, "the pool still works")
}

pub(crate) fn abort_is_a_crash_with_sigabrt() -> Result<(), Failed> {
    crash(|d| d.run(abort_now, ()), ExitReason::Signal(6), "about to abort")
}

pub(crate) fn exit_is_a_crash_with_its_code() -> Result<(), Failed> {
    crash(|d| d.run(exit_with, 3), ExitReason::Code(3), "exiting with 3")
}

pub(crate) fn segfault_is_a_crash_with_sigsegv() -> Result<(), Failed> {
    crash(|d| d.run(segfault, ()), ExitReason::Signal(11), "about to dereference null")
}

/// Tasks that finished just before their worker crashed keep their values, and only the task
/// that crashed it is reported WorkerCrashed, even when the worker had several: its start
/// counter tells which one it was running.
pub(crate) fn a_crash_blames_only_the_task_that_crashed() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    d.wait_for_workers(WAIT).ok_or("not ready")?;
    for round in 0..20 {
        let before: Vec<_> = (0..50).map(|i| d.run(identity_or_exit, i)).collect();
        let crasher = d.run(identity_or_exit, u64::MAX);
        let after: Vec<_> = (0..50).map(|i| d.run(identity_or_exit, i)).collect();
        let results = d
            .get_results_with(
                &[before.clone(), after.clone()].concat(),
                Fetch::default().within(WAIT),
            )
            .map_err(fail)?;
        for (i, r) in results.iter().enumerate() {
            check(
                r.as_ref().ok() == Some(&((i % 50) as u64)),
                format!("round {round}: task #{i} ended {r:?}"),
            )?;
        }
        match one(&d, crasher)? {
            Err(TaskError::WorkerCrashed { exit: ExitReason::Code(3), .. }) => {}
            other => return Err(format!("round {round}: the crasher ended {other:?}").into()),
        }
    }
    Ok(())
}

/// A task submitted by name with its arguments already encoded (how the Python package
/// submits), fetched by its number, and the order of completion without fetching.
pub(crate) fn a_task_runs_by_name_and_completions_come_in_finishing_order() -> Result<(), Failed> {
    use blitzen::{Completion, NamedTask};
    let d = dispatcher(2)?;
    let named = |fingerprint| NamedTask {
        name: <nap_ms as Task>::NAME,
        signature: <nap_ms as Task>::SIGNATURE,
        fingerprint,
    };
    let encoded =
        |ms: u64| blitzen_protocol::frame::to_body(&ms).map(bytes::Bytes::from).map_err(fail);
    let right = named(<nap_ms as Task>::FINGERPRINT);
    let slow = d.run_named(right, encoded(300)?, RunOptions::default());
    let fast = d.run_named(right, encoded(0)?, RunOptions::default());
    let wrong = d.run_named(named(1), encoded(0)?, RunOptions::default());
    let mut completions = d.completions(&[slow, fast]);
    let mut order = Vec::new();
    loop {
        match completions.next_within(WAIT) {
            Completion::Finished(seq) => order.push(seq),
            Completion::AllDone => break,
            Completion::Waiting => return Err("no task finished in time".into()),
        }
    }
    check(order == [fast.seq(), slow.seq()], format!("finishing order {order:?}"))?;
    let ids = [d.id_of(slow.seq()), d.id_of(fast.seq())];
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let values: Vec<u64> =
        results.iter().map(|r| r.decode::<u64>().map_err(fail)).collect::<Result<_, _>>()?;
    check(values == [300, 0], format!("values {values:?}"))?;
    let wrong = d.get_task_results(&[wrong], Fetch::default().within(WAIT)).map_err(fail)?;
    match wrong[0].decode::<u64>() {
        Err(TaskError::SignatureMismatch { .. }) => {}
        other => return Err(format!("a wrong fingerprint ran: {other:?}").into()),
    }
    match d.get_task_results(&[d.id_of(999)], Fetch::default()) {
        Err(DispatchError::UnknownTask(999)) => Ok(()),
        other => Err(format!("an unissued number: {other:?}").into()),
    }
}

pub(crate) fn worker_killed_from_outside_is_replaced() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let reports = Reports::new().map_err(fail)?;
    let id = d.run(report_and_sleep, (reports.address(), 60));
    let pid = reports.receive(WAIT).map_err(fail)?[0];
    kill(pid);
    match one(&d, id)? {
        Err(e @ TaskError::WorkerCrashed { exit: ExitReason::Signal(9), .. }) => {
            let ctx = e.context();
            check(
                ctx.worker.as_ref().map(|w| w.pid) == Some(pid),
                "the error names the killed worker",
            )?;
            let text = e.to_string();
            check(
                text.contains("possibly out of memory: peak RSS"),
                format!("no memory hint: {text}"),
            )?;
        }
        other => return Err(format!("expected SIGKILL, got {other:?}").into()),
    }
    back_to_full_strength(&d, 2, pid)?;
    check(d.status().replacements == 1, format!("replacements {}", d.status().replacements))
}

/// However many tasks a worker holds when it is killed from outside, the one it runs ends
/// `WorkerCrashed`, the ones behind it run once on its replacement, and nothing runs twice.
pub(crate) fn a_killed_worker_ends_the_task_it_runs_however_many_it_holds() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let reports = Reports::new().map_err(fail)?;
    let path = std::env::temp_dir().join(format!("blitzen-test-{}-tally", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let tally = path.to_string_lossy().into_owned();
    let step = |step: u64, mode: u8, address: &str| {
        d.run(tally_step, (tally.clone(), step, mode, address.to_string()))
    };
    let mut steps = Vec::new();
    let outcome = (|| {
        for held in [1u64, 3, 10] {
            let base = held * 1000;
            // Teach the pool that the task is short, so it is prefetched behind a running one.
            let warm: Vec<_> = (0..50).map(|i| step(base + 100 + i, 0, "")).collect();
            d.get_results_with(&warm, Fetch::default().within(WAIT)).map_err(fail)?;
            // The worker naps while the rest arrive: all of them are sent to it behind the nap.
            let nap = step(base, 1, "");
            let runs = step(base + 1, 2, &reports.address());
            let behind: Vec<_> = (2..=held).map(|i| step(base + i, 0, "")).collect();
            steps.extend((0..=held).map(|i| base + i).chain((0..50).map(|i| base + 100 + i)));
            let pid = reports.receive(WAIT).map_err(fail)?[0];
            kill(pid);
            match one(&d, runs)? {
                Err(TaskError::WorkerCrashed { exit: ExitReason::Signal(9), .. }) => {}
                other => {
                    return Err(format!("holding {held}: the running task ended {other:?}").into());
                }
            }
            check(one(&d, nap)? == Ok(base), format!("holding {held}: the nap"))?;
            let rest = d.get_results_with(&behind, Fetch::default().within(WAIT)).map_err(fail)?;
            for (i, r) in rest.into_iter().enumerate() {
                let want = base + 2 + i as u64;
                check(r == Ok(want), format!("holding {held}: task {want} ended {r:?}"))?;
            }
        }
        Ok::<(), Failed>(())
    })();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    outcome?;
    let mut ran: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    ran.sort_unstable();
    steps.sort_unstable();
    check(ran == steps, format!("runs {ran:?}, expected each of {steps:?} once"))
}

pub(crate) fn timeout_kills_the_worker_and_its_children() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let reports = Reports::new().map_err(fail)?;
    let id = d.run_with_timeout(spawn_child_and_hang, reports.address(), Duration::from_secs(1));
    let pids = reports.receive(WAIT).map_err(fail)?;
    let (worker, child) = (pids[0], pids[1]);
    check(is_alive(child), "the child runs while the task does")?;
    match one(&d, id)? {
        Err(TaskError::TimedOut { timeout, ctx }) => {
            check(timeout == Duration::from_secs(1), format!("timeout {timeout:?}"))?;
            check(ctx.worker.map(|w| w.pid) == Some(worker), "the error names the worker")?;
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    back_to_full_strength(&d, 2, worker)?;
    check(!is_alive(worker), format!("worker {worker} survived its timeout"))?;
    // The child was killed with the group; it may linger a moment as a zombie of init.
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(!is_alive(child), format!("child {child} of the timed-out task survived"))
}

/// Priorities on one machine: tasks queued behind a busy worker start higher first, in
/// submission order; a low one under a stream of higher ones still goes once it has risen to
/// them (one level a second of waiting), long before the stream ends.
pub(crate) fn priorities_order_the_queue_and_a_waiting_low_task_rises() -> Result<(), Failed> {
    const HIGHS: u64 = 200;
    let d = dispatcher(1)?;
    let reports = Reports::new().map_err(fail)?;
    let blocker = d.run(report_and_sleep, (reports.address(), 60));
    let pid = reports.receive(WAIT).map_err(fail)?[0];
    let tally = Tally::new().map_err(fail)?;
    // 20 ms each: the priority-2 stream lasts 4 s; the low task rises to 2 in 2 s.
    let mut ids = vec![d.run(counted, tally.args(0, 20))];
    let high = RunOptions::default().with_priority(2);
    ids.extend((1..=HIGHS).map(|n| d.run_with(counted, tally.args(n, 20), high)));
    // The queue is full: the worker's replacement takes from it.
    kill(pid);
    check(matches!(one(&d, blocker)?, Err(TaskError::WorkerCrashed { .. })), "the blocker")?;
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results.iter().all(Result::is_ok), format!("{results:?}"))?;
    tally.check_aging(HIGHS)
}
