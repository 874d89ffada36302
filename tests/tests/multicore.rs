//! End-to-end tests of `MulticoreDispatcher` on real worker processes.
//!
//! The workers are this test binary re-executed, so `main` calls `blitzen::worker_main()` before
//! handing over to the test harness.

use std::time::{Duration, Instant};

use blitzen::{
    CommandSpec, DispatchError, ExitReason, Fetch, MulticoreDispatcher, RunOptions, Task,
    TaskError, command, echo,
};
use blitzen_tests::tally::{Tally, counted};
use blitzen_tests::trial;
use blitzen_tests::{Reports, check, fail, is_alive, kill, report};
use libtest_mimic::{Arguments, Failed};
use serde_bytes::ByteBuf;

// ----- tasks -----

#[blitzen::task]
fn identity(x: u64) -> u64 {
    x
}

#[blitzen::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[blitzen::task]
fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[blitzen::task]
fn explode(message: String) -> u64 {
    eprintln!("about to panic");
    panic!("{message}")
}

/// `x`, or the end of its worker when `x` is `u64::MAX`: a task whose run times say "tiny"
/// right up to the crash, so the pool streams it behind others.
#[blitzen::task]
fn identity_or_exit(x: u64) -> u64 {
    if x == u64::MAX {
        std::process::exit(3)
    }
    x
}

#[blitzen::task]
fn refuse(message: String) -> Result<u64, String> {
    Err(message)
}

/// Aborts its worker on each of the first `crashes` runs (counted in the file at `tally`),
/// then returns the number of the run that succeeded.
#[blitzen::task]
fn crash_at_first(tally: String, crashes: usize) -> usize {
    use std::io::Write;
    let runs = std::fs::read_to_string(&tally).map(|t| t.len()).unwrap_or(0) + 1;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&tally).expect("tally");
    f.write_all(b"x").expect("tally written");
    if runs <= crashes {
        std::process::abort();
    }
    runs
}

#[blitzen::task]
fn abort_now() {
    eprintln!("about to abort");
    std::process::abort()
}

#[blitzen::task]
fn exit_with(code: i32) {
    eprintln!("exiting with {code}");
    std::process::exit(code)
}

#[blitzen::task]
fn segfault() {
    eprintln!("about to dereference null");
    // SAFETY: none — this task exists to crash its worker with a real segmentation fault.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::null_mut::<u8>().write_volatile(1);
    }
}

/// Reports its worker's pid, then sleeps.
#[blitzen::task]
fn report_and_sleep(address: String, seconds: u64) -> Result<(), String> {
    report(&address, &[std::process::id()]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(seconds));
    Ok(())
}

/// Starts a child process, reports its worker's pid and the child's, then sleeps.
#[blitzen::task]
fn spawn_child_and_hang(address: String) -> Result<(), String> {
    let child =
        std::process::Command::new("sleep").arg("1000").spawn().map_err(|e| e.to_string())?;
    report(&address, &[std::process::id(), child.id()]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1000));
    Ok(())
}

/// Appends `step` and a newline to the file at `tally`, then, by `mode`: 0 returns at once;
/// 1 naps 300 ms; 2 waits 20 ms (past the worker's batching of the results before it), reports
/// its worker's pid to `address` and sleeps until killed.
#[blitzen::task]
fn tally_step(tally: String, step: u64, mode: u8, address: String) -> Result<u64, String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&tally);
    let file = file.as_mut().map_err(|e| e.to_string())?;
    file.write_all(format!("{step}\n").as_bytes()).map_err(|e| e.to_string())?;
    match mode {
        1 => std::thread::sleep(Duration::from_millis(300)),
        2 => {
            std::thread::sleep(Duration::from_millis(20));
            report(&address, &[std::process::id()]).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => {}
    }
    Ok(step)
}

/// Prints `bytes` bytes of numbered lines to stdout, then returns a value.
#[blitzen::task]
fn chatter(bytes: usize) -> u64 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    let mut line = 0u64;
    while written < bytes {
        let text = format!("line {line:09}\n");
        let _ = out.write_all(text.as_bytes());
        written += text.len();
        line += 1;
    }
    line
}

/// Reverses a byte buffer.
#[blitzen::task]
fn reverse(data: ByteBuf) -> ByteBuf {
    let mut v = data.into_vec();
    v.reverse();
    ByteBuf::from(v)
}

/// Reverses a blob.
#[blitzen::task]
fn reverse_blob(data: blitzen::Blob) -> blitzen::Blob {
    let mut v: Vec<u8> = data.into();
    v.reverse();
    blitzen::Blob::from(v)
}

/// A handle to a task no worker has.
#[derive(Clone, Copy)]
struct Missing;
impl Task for Missing {
    type Args = ();
    type Output = ();
    const NAME: &'static str = "no_such_task";
    const SIGNATURE: &'static str = "fn no_such_task() -> ()";
    const FINGERPRINT: u64 = 1;
}

/// A handle to `identity` as another build would see it.
#[derive(Clone, Copy)]
struct IdentityV2;
impl Task for IdentityV2 {
    type Args = String;
    type Output = String;
    const NAME: &'static str = "identity";
    const SIGNATURE: &'static str = "fn identity(String) -> String";
    const FINGERPRINT: u64 = blitzen::__private::fingerprint("fn identity(String) -> String");
}

// ----- helpers -----

const WAIT: Duration = Duration::from_secs(30);

fn dispatcher(workers: usize) -> Result<MulticoreDispatcher, Failed> {
    MulticoreDispatcher::new(workers).map_err(|e| Failed::from(format!("cannot start: {e}")))
}

fn one<O: serde::de::DeserializeOwned>(
    d: &MulticoreDispatcher,
    id: blitzen::TaskId<O>,
) -> Result<Result<O, TaskError>, Failed> {
    let mut r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    r.pop().ok_or_else(|| Failed::from("no result"))
}

/// Waits until the pool is back to `n` ready workers, none of them `dead`.
fn back_to_full_strength(d: &MulticoreDispatcher, n: usize, dead: u32) -> Result<(), Failed> {
    let pids = d.wait_for_workers(WAIT).ok_or("the pool did not recover")?;
    check(pids.len() == n, format!("{} workers instead of {n}", pids.len()))?;
    check(!pids.contains(&dead), format!("dead worker {dead} still listed"))?;
    check(pids.iter().all(|&p| is_alive(p)), format!("a listed worker is not alive: {pids:?}"))
}

// ----- failures of a task -----

fn panic_is_reported_and_the_worker_survives() -> Result<(), Failed> {
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
            check(location.contains("multicore.rs"), format!("location {location:?}"))?;
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

fn returned_error_is_reported() -> Result<(), Failed> {
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

fn abort_is_a_crash_with_sigabrt() -> Result<(), Failed> {
    crash(|d| d.run(abort_now, ()), ExitReason::Signal(6), "about to abort")
}

fn exit_is_a_crash_with_its_code() -> Result<(), Failed> {
    crash(|d| d.run(exit_with, 3), ExitReason::Code(3), "exiting with 3")
}

fn segfault_is_a_crash_with_sigsegv() -> Result<(), Failed> {
    crash(|d| d.run(segfault, ()), ExitReason::Signal(11), "about to dereference null")
}

/// Tasks that finished just before their worker crashed keep their values, and only the task
/// that crashed it is reported WorkerCrashed, even when the worker had several: its start
/// counter tells which one it was running.
fn a_crash_blames_only_the_task_that_crashed() -> Result<(), Failed> {
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
fn a_task_runs_by_name_and_completions_come_in_finishing_order() -> Result<(), Failed> {
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

fn worker_killed_from_outside_is_replaced() -> Result<(), Failed> {
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
fn a_killed_worker_ends_the_task_it_runs_however_many_it_holds() -> Result<(), Failed> {
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

fn timeout_kills_the_worker_and_its_children() -> Result<(), Failed> {
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

// ----- cancel -----

fn cancel_ends_queued_and_running_tasks_and_kills_the_worker_with_its_children()
-> Result<(), Failed> {
    let d = dispatcher(1)?;
    let reports = Reports::new().map_err(fail)?;
    let running = d.run(spawn_child_and_hang, reports.address());
    let queued: Vec<_> = (0..3).map(|i| d.run(nap_ms, 10 + i)).collect();
    let pids = reports.receive(WAIT).map_err(fail)?;
    let (worker, child) = (pids[0], pids[1]);
    d.cancel(&running).map_err(fail)?;
    d.cancel(&queued[1]).map_err(fail)?;
    match one(&d, running)? {
        Err(TaskError::Cancelled { reason, ctx }) => {
            check(reason.contains("while running"), format!("reason: {reason}"))?;
            check(ctx.worker.map(|w| w.pid) == Some(worker), "the error names the worker")?;
        }
        other => return Err(format!("expected a cancel, got {other:?}").into()),
    }
    let rest = d.get_results_with(&queued, Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(rest[0], Ok(10)), format!("the first queued task runs: {:?}", rest[0]))?;
    check(
        matches!(&rest[1], Err(TaskError::Cancelled { reason, .. }) if reason.contains("before it started")),
        format!("the cancelled queued task: {:?}", rest[1]),
    )?;
    check(matches!(rest[2], Ok(12)), format!("the last queued task runs: {:?}", rest[2]))?;
    back_to_full_strength(&d, 1, worker)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(!is_alive(child), format!("child {child} of the cancelled task survived"))
}

fn cancel_leaves_finished_tasks_alone_and_refuses_foreign_ids() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let id = d.run(identity, 7);
    check(one(&d, id)?.map_err(fail)? == 7, "ran")?;
    // Finished and fetched, or finished and kept: a cancel changes nothing, twice over.
    d.cancel(&id).map_err(fail)?;
    let kept = d.run(identity, 8);
    d.get_results_with(std::slice::from_ref(&kept), Fetch::keep().within(WAIT)).map_err(fail)?;
    d.cancel(&kept).map_err(fail)?;
    d.cancel(&kept).map_err(fail)?;
    check(matches!(one(&d, kept)?, Ok(8)), "a finished task keeps its value")?;
    let other = dispatcher(1)?;
    let foreign = other.run(identity, 1);
    match d.cancel(&foreign) {
        Err(DispatchError::UnknownTask(_)) => {}
        other => return Err(format!("a foreign id: {other:?}").into()),
    }
    check(matches!(one(&other, foreign)?, Ok(1)), "the foreign task itself is untouched")
}

fn cancel_all_ends_every_task_once_even_those_a_worker_prefetched() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    // Teach the pool that `identity` is tiny, so that workers are handed many at once.
    let warm: Vec<_> = (0..200).map(|i| d.run(identity, i)).collect();
    d.get_results_with(&warm, Fetch::default().within(WAIT)).map_err(fail)?;
    let pids = d.wait_for_workers(WAIT).ok_or("not ready")?;
    let ids: Vec<_> = (0..20_000).map(|i| d.run(identity, i)).collect();
    let cancelled = d.cancel_all();
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let (mut values, mut cancels) = (0, 0);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) if *v == i as u64 => values += 1,
            Err(TaskError::Cancelled { .. }) => cancels += 1,
            other => return Err(format!("task {i}: {other:?}").into()),
        }
    }
    // A task that finished before the cancel reached it keeps its value, so at most the tasks
    // still unfinished at `cancel_all` end cancelled, and at least those that were not counted
    // keep their value.
    check(cancels > 0, format!("nothing was cancelled ({values} values)"))?;
    check(
        cancels <= cancelled && cancelled <= ids.len() && values + cancels == ids.len(),
        format!("{cancels} ended cancelled, {values} with a value; cancel_all counted {cancelled}"),
    )?;
    check(d.cancel_all() == 0, "nothing is left to cancel")?;
    // The pool carries on at full strength (a worker killed for a prefetched task is replaced).
    let after = d.run(identity, 99);
    check(matches!(one(&d, after)?, Ok(99)), "the pool still runs tasks")?;
    let now = d.wait_for_workers(WAIT).ok_or("the pool did not recover")?;
    check(now.len() == pids.len(), format!("{} workers, not {}", now.len(), pids.len()))
}

fn timeout_counts_from_the_start_not_the_queue() -> Result<(), Failed> {
    // One worker: the fast tasks wait 1.5 s behind the slow one, longer than their timeout.
    let d = dispatcher(1)?;
    let slow = d.run(nap_ms, 1500);
    let fast: Vec<_> =
        (0..3).map(|_| d.run_with_timeout(nap_ms, 100, Duration::from_secs(1))).collect();
    check(one(&d, slow)?.map_err(fail)? == 1500, "slow task")?;
    for r in d.get_results_with(&fast, Fetch::default().within(WAIT)).map_err(fail)? {
        check(r.map_err(fail)? == 100, "fast task")?;
    }
    Ok(())
}

fn slow_task_does_not_hold_up_the_tasks_behind_it() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    // Teach the pool that `identity` is short, so it is prefetched.
    let warm: Vec<_> = (0..50).map(|i| d.run(identity, i)).collect();
    d.get_results_with(&warm, Fetch::default().within(WAIT)).map_err(fail)?;
    let slow = d.run(nap_ms, 4000);
    let quick: Vec<_> = (0..200).map(|i| d.run(identity, i)).collect();
    let started = Instant::now();
    let got = d.get_results_with(&quick, Fetch::default().within(WAIT)).map_err(fail)?;
    check(got.into_iter().map(|r| r.unwrap_or(u64::MAX)).eq(0..200), "quick results")?;
    // Had any quick task been queued behind the slow one, this wait would have lasted ~4 s.
    let waited = started.elapsed();
    let still_running = matches!(
        d.get_results_with(&[slow], Fetch::keep().within(Duration::ZERO)),
        Err(DispatchError::WaitTimedOut { .. })
    );
    check(still_running, format!("quick tasks took {waited:?}: they waited for the slow one"))
}

fn finished_result_is_not_held_back_by_a_long_prefetched_task() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    // Teach the pool that `nap_ms` is short, so the next two are sent to the worker together.
    let warm: Vec<_> = (0..50).map(|_| d.run(nap_ms, 0)).collect();
    d.get_results_with(&warm, Fetch::default().within(WAIT)).map_err(fail)?;
    let quick = d.run(nap_ms, 0);
    let long = d.run(nap_ms, 5000);
    let started = Instant::now();
    // Had the quick result waited in the worker behind the long task, this would time out.
    let got = d.get_results_with(&[quick], Fetch::default().within(Duration::from_secs(3)));
    check(matches!(got.as_deref(), Ok([Ok(0)])), format!("{got:?} after {:?}", started.elapsed()))?;
    let still_running = matches!(
        d.get_results_with(&[long], Fetch::keep().within(Duration::ZERO)),
        Err(DispatchError::WaitTimedOut { .. })
    );
    check(still_running, "the long task should still be running")
}

// ----- results -----

fn results_come_in_the_order_asked() -> Result<(), Failed> {
    let d = dispatcher(4)?;
    let ids: Vec<_> = [400, 300, 200, 100, 0].iter().map(|&ms| d.run(nap_ms, ms)).collect();
    let got: Vec<u64> =
        d.get_results(&ids).map_err(fail)?.into_iter().map(|r| r.unwrap_or(0)).collect();
    check(got == [400, 300, 200, 100, 0], format!("{got:?}"))?;
    let reversed: Vec<_> = ids.iter().rev().copied().collect();
    check(
        matches!(d.get_results(&reversed), Err(DispatchError::AlreadyFetched(_))),
        "fetched twice",
    )
}

fn clear_false_keeps_results() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let ids = [d.run(add, (1, 2)), d.run(add, (3, 4))];
    let first = d.get_results_with(&ids, Fetch::keep()).map_err(fail)?;
    let second = d.get_results(&ids).map_err(fail)?;
    check(first == second && first == [Ok(3), Ok(7)], format!("{first:?} / {second:?}"))?;
    check(matches!(d.get_results(&ids[..1]), Err(DispatchError::AlreadyFetched(1))), "cleared")
}

fn join_returns_unfetched_results_in_submission_order() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let a = d.run(nap_ms, 300);
    let b = d.run(echo::<String>(), "hello".into());
    let c = d.run(refuse, "bad".into());
    let e = d.run(add, (20, 22));
    check(one(&d, b)?.map_err(fail)? == "hello", "fetched before join")?;
    let results = d.join();
    let ids: Vec<u64> = results.iter().map(|r| r.id).collect();
    check(ids == [a.seq(), c.seq(), e.seq()], format!("join order {ids:?}"))?;
    check(results[0].decode_as(nap_ms).map_err(fail)? == 300, "first")?;
    check(matches!(results[1].decode_as(refuse), Err(TaskError::Returned { .. })), "second")?;
    check(results[2].decode::<u64>().map_err(fail)? == 42, "third")?;
    // Joined means shut down: new work is cancelled at once, not lost.
    let late = d.run(add, (1, 1));
    check(matches!(one(&d, late)?, Err(TaskError::Cancelled { .. })), "run after join")
}

fn ten_thousand_tasks_each_return_exactly_once() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..10_000).map(|i| d.run(counted, runs.args(i, 0))).collect();
    let got = d
        .get_results_with(&ids, Fetch::default().within(Duration::from_secs(120)))
        .map_err(fail)?;
    check(got.len() == 10_000, "count")?;
    for (i, r) in got.into_iter().enumerate() {
        check(r.map_err(fail)? == i as u64, format!("task {i}"))?;
    }
    check(d.pending() == 0, "nothing pending")?;
    runs.check_each_once(0..10_000)?;
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the pool reported {duplicates} tasks twice"))
}

fn large_arguments_and_results() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let data: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let id = d.run(reverse, ByteBuf::from(data.clone()));
    let back = one(&d, id)?.map_err(fail)?.into_vec();
    check(back.len() == data.len(), format!("length {}", back.len()))?;
    check(back.iter().rev().eq(data.iter()), "content")
}

fn blobs_round_trip_and_arrive_shared_with_the_result() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let small = d.run(reverse_blob, blitzen::Blob::from(&b"abc"[..]));
    let large = d.run(reverse_blob, blitzen::Blob::from(data.clone()));
    let results = d.get_task_results(&[small, large], blitzen::Fetch::default()).map_err(fail)?;
    check(results[0].decode::<blitzen::Blob>().map_err(fail)?[..] == b"cba"[..], "small blob")?;
    let back: blitzen::Blob = results[1].decode().map_err(fail)?;
    check(back.iter().rev().eq(data.iter()), "large blob content")?;
    // Decoding shares the received result instead of copying a new buffer.
    let raw = results[1].outcome().map_err(fail)?;
    let range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
    check(range.contains(&(back.as_ptr() as usize)), "the large blob was copied on decoding")
}

fn retries_rerun_a_crashed_task_only_when_asked() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let dir = std::env::temp_dir();
    let tally = |name: &str| {
        let path = dir.join(format!("blitzen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path.to_string_lossy().into_owned()
    };
    let (once, twice, never) = (tally("once"), tally("twice"), tally("never"));
    // One at a time, so each crash is one task's alone.
    let retry_once = RunOptions::default().with_retries(1);
    let results: Result<Vec<_>, _> = [
        (once.clone(), 1, retry_once),
        (twice.clone(), 5, retry_once),
        (never.clone(), 1, RunOptions::default()),
    ]
    .into_iter()
    .map(|(tally, crashes, options)| {
        let id = d.run_with(crash_at_first, (tally, crashes), options);
        d.get_results_with(&[id], Fetch::default().within(WAIT)).map(|mut r| r.remove(0))
    })
    .collect();
    let runs = |p: &str| std::fs::read_to_string(p).map(|t| t.len()).unwrap_or(0);
    let counts = (runs(&once), runs(&twice), runs(&never));
    for p in [&once, &twice, &never] {
        let _ = std::fs::remove_file(p);
    }
    let results = results.map_err(fail)?;
    check(matches!(results[0], Ok(2)), format!("retried once, then succeeded: {:?}", results[0]))?;
    check(
        matches!(results[1], Err(TaskError::WorkerCrashed { .. })),
        format!("retries used up: {:?}", results[1]),
    )?;
    check(
        matches!(results[2], Err(TaskError::WorkerCrashed { .. })),
        format!("no retries asked: reported at once: {:?}", results[2]),
    )?;
    check(counts == (2, 2, 1), format!("runs per task {counts:?}"))
}

fn megabytes_of_stdout_are_captured_and_truncated() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let id = d.run(chatter, 5 << 20);
    let r = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?.remove(0);
    let lines = r.decode_as(chatter).map_err(fail)?;
    check(r.run.stdout.is_truncated(), "5 MiB of output must be truncated")?;
    check(
        r.run.stdout.total_len() == lines * 15,
        format!("total {} for {lines} lines", r.run.stdout.total_len()),
    )?;
    check(r.run.stdout.head.starts_with(b"line 000000000\n"), "head")?;
    let last = format!("line {:09}\n", lines - 1);
    check(r.run.stdout.tail.ends_with(last.as_bytes()), "tail")?;
    check(r.run.stdout.to_text().contains("bytes omitted"), "marked")?;
    // The frames survived: the next task works.
    check(one(&d, d.run(add, (5, 5)))?.map_err(fail)? == 10, "next task")
}

fn unknown_task_and_signature_mismatch_are_clear_errors() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    check(matches!(one(&d, d.run(Missing, ()))?, Err(TaskError::UnknownTask { .. })), "unknown")?;
    match one(&d, d.run(IdentityV2, "x".into()))? {
        Err(e @ TaskError::SignatureMismatch { .. }) => {
            check(e.to_string().contains("fn identity(u64) -> u64"), format!("{e}"))
        }
        other => Err(format!("expected a mismatch, got {other:?}").into()),
    }
}

fn builtin_command_runs_a_program() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let spec = CommandSpec::new("sh").args(["-c", "read x; echo got $x; exit 4"]).stdin("hi\n");
    let out = one(&d, d.run(command, spec))?.map_err(fail)?;
    check(out.code == Some(4) && &out.stdout[..] == b"got hi\n", format!("{out:?}"))
}

fn ids_of_another_dispatcher_are_refused() -> Result<(), Failed> {
    let a = dispatcher(1)?;
    let b = dispatcher(1)?;
    let id = b.run(add, (1, 1));
    check(matches!(a.get_results(&[id]), Err(DispatchError::UnknownTask(_))), "foreign id")
}

fn map_imap_and_imap_unordered() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let squares: Vec<u64> = d
        .map(add, (0..100u64).map(|i| (i, i)))
        .map_err(fail)?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check(squares == (0..100).map(|i| 2 * i).collect::<Vec<u64>>(), "map keeps the order")?;
    // imap: submission order, even though the later tasks finish first.
    let ordered: Vec<u64> = d.imap(nap_ms, [300, 10, 10]).map(|r| r.unwrap_or(0)).collect();
    check(ordered == [300, 10, 10], format!("imap {ordered:?}"))?;
    // imap_unordered: completion order (two workers: 600 and 50 start together).
    let finished: Vec<u64> =
        d.imap_unordered(nap_ms, [600, 50, 300]).map(|(_, r)| r.unwrap_or(0)).collect();
    check(finished == [50, 300, 600], format!("imap_unordered {finished:?}"))?;
    check(d.pending() == 0 && d.join().is_empty(), "streams take their results")
}

// ----- lifecycle -----

fn shutdown_leaves_no_worker_alive() -> Result<(), Failed> {
    let d = dispatcher(3)?;
    let pids = d.wait_for_workers(WAIT).ok_or("not ready")?;
    let running = d.run(nap_ms, 60_000);
    let reports = Reports::new().map_err(fail)?;
    let _hanging = d.run(spawn_child_and_hang, reports.address());
    let child = reports.receive(WAIT).map_err(fail)?[1];
    d.shutdown();
    d.shutdown();
    for pid in pids {
        check(!is_alive(pid), format!("worker {pid} outlived shutdown"))?;
    }
    check(matches!(one(&d, running)?, Err(TaskError::Cancelled { .. })), "running task cancelled")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(!is_alive(child), "a task's child outlived shutdown")
}

fn drop_stops_the_workers() -> Result<(), Failed> {
    let pids = {
        let d = dispatcher(2)?;
        let _ = d.run(nap_ms, 60_000);
        d.wait_for_workers(WAIT).ok_or("not ready")?
    };
    for pid in pids {
        check(!is_alive(pid), format!("worker {pid} outlived the dispatcher"))?;
    }
    Ok(())
}

fn killed_dispatcher_process_leaves_no_orphans() -> Result<(), Failed> {
    use std::io::BufRead;
    let reports = Reports::new().map_err(fail)?;
    let mut program = std::process::Command::new(env!("CARGO_BIN_EXE_blitzen-orphan"))
        .arg(reports.address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(fail)?;
    // Whatever happens below, the program must not outlive the test.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = program.stdout.take().ok_or("no stdout")?;
    let mut program = Reap(program);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(fail)?;
    let mut pids: Vec<u32> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    check(pids.len() == 2, format!("worker pids: {line:?}"))?;
    let task = reports.receive(WAIT).map_err(fail)?;
    pids.push(task[1]);
    check(pids.iter().all(|&p| is_alive(p)), "all alive before the kill")?;
    program.0.kill().map_err(fail)?;
    program.0.wait().map_err(fail)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<u32> = pids.into_iter().filter(|&p| is_alive(p)).collect();
    survivors.iter().for_each(|&p| kill(p));
    check(survivors.is_empty(), format!("orphans left behind: {survivors:?}"))
}

fn forgetting_worker_main_is_a_clear_error() -> Result<(), Failed> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blitzen-forgetful"))
        .output()
        .map_err(fail)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.code() == Some(1), format!("status {:?}, stderr {stderr}", out.status))?;
    // What `main` printed for the error it returned: the sentence with the hint, not a
    // `Debug` dump of nested variants.
    check(stderr.starts_with("Error: worker process "), format!("stderr: {stderr}"))?;
    check(
        stderr.contains("does main() call blitzen::worker_main() first thing?"),
        format!("stderr: {stderr}"),
    )?;
    check(!stderr.contains("WorkerExited") && !stderr.contains("Pool("), format!("{stderr}"))
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(panic_is_reported_and_the_worker_survives),
        trial!(returned_error_is_reported),
        trial!(abort_is_a_crash_with_sigabrt),
        trial!(exit_is_a_crash_with_its_code),
        trial!(a_crash_blames_only_the_task_that_crashed),
        trial!(a_task_runs_by_name_and_completions_come_in_finishing_order),
        trial!(segfault_is_a_crash_with_sigsegv),
        trial!(worker_killed_from_outside_is_replaced),
        trial!(a_killed_worker_ends_the_task_it_runs_however_many_it_holds),
        trial!(timeout_kills_the_worker_and_its_children),
        trial!(timeout_counts_from_the_start_not_the_queue),
        trial!(slow_task_does_not_hold_up_the_tasks_behind_it),
        trial!(finished_result_is_not_held_back_by_a_long_prefetched_task),
        trial!(results_come_in_the_order_asked),
        trial!(clear_false_keeps_results),
        trial!(join_returns_unfetched_results_in_submission_order),
        trial!(ten_thousand_tasks_each_return_exactly_once),
        trial!(large_arguments_and_results),
        trial!(blobs_round_trip_and_arrive_shared_with_the_result),
        trial!(retries_rerun_a_crashed_task_only_when_asked),
        trial!(megabytes_of_stdout_are_captured_and_truncated),
        trial!(unknown_task_and_signature_mismatch_are_clear_errors),
        trial!(builtin_command_runs_a_program),
        trial!(ids_of_another_dispatcher_are_refused),
        trial!(map_imap_and_imap_unordered),
        trial!(shutdown_leaves_no_worker_alive),
        trial!(cancel_ends_queued_and_running_tasks_and_kills_the_worker_with_its_children),
        trial!(cancel_leaves_finished_tasks_alone_and_refuses_foreign_ids),
        trial!(cancel_all_ends_every_task_once_even_those_a_worker_prefetched),
        trial!(drop_stops_the_workers),
        trial!(killed_dispatcher_process_leaves_no_orphans),
        trial!(forgetting_worker_main_is_a_clear_error),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
