//! Cancelling queued and running tasks.

use crate::prelude::*;

pub(crate) fn cancel_ends_queued_and_running_tasks_and_kills_the_worker_with_its_children()
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

pub(crate) fn cancel_leaves_finished_tasks_alone_and_refuses_foreign_ids() -> Result<(), Failed> {
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

pub(crate) fn cancel_all_ends_every_task_once_even_those_a_worker_prefetched() -> Result<(), Failed>
{
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

pub(crate) fn timeout_counts_from_the_start_not_the_queue() -> Result<(), Failed> {
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

pub(crate) fn slow_task_does_not_hold_up_the_tasks_behind_it() -> Result<(), Failed> {
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

pub(crate) fn finished_result_is_not_held_back_by_a_long_prefetched_task() -> Result<(), Failed> {
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
