//! The async face of both dispatchers on real processes: thousands of awaits on one
//! current-thread runtime while its other tasks keep running, futures dropped (the task runs
//! on) or aborted (the task is cancelled, its processes killed), a `select!` with a timeout,
//! shutdown waking pending futures, and a blocking call made inside a runtime.
//!
//! The workers are this test binary re-executed, so `main` calls `blitzen::worker_main()` before
//! handing over to the test harness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen::{
    Backend, CommandSpec, DispatchError, Dispatcher, Fetch, MulticoreDispatcher, TaskError,
    command, echo, sleep,
};
use blitzen_tests::cluster::{Process, ServerProcess, TempFile, driver, start_agent, start_server};
use blitzen_tests::{check, fail, is_alive, trial};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

/// A current-thread runtime with timers, as a small service would run.
fn current_thread() -> Result<tokio::runtime::Runtime, Failed> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)
}

/// Threads of this process, from `/proc`.
fn threads() -> Result<usize, Failed> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(fail)?;
    let line = status.lines().find_map(|l| l.strip_prefix("Threads:")).ok_or("no Threads line")?;
    line.trim().parse().map_err(fail)
}

/// A cluster of the real binaries: a server and an agent of 2 workers.
struct Cluster {
    _agent: Process,
    server: ServerProcess,
}

fn cluster() -> Result<Cluster, Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let agent = start_agent(&server.addr, 2, "async").map_err(fail)?;
    Ok(Cluster { _agent: agent, server })
}

/// 10,000 awaits at once on a current-thread runtime, one of them on a task of 2 s, while a task
/// of the same runtime ticks every 10 ms: every await resolves to its own value, the ticks go
/// on (the largest gap is far below the 2 s a blocked runtime would show), and the awaits cost
/// no thread each.
fn ten_thousand_awaits<B: Backend + 'static>(d: Dispatcher<B>) -> Result<(), Failed> {
    let d = Arc::new(d);
    let runtime = current_thread()?;
    let threads_before = threads()?;
    let awaited = runtime.block_on(async {
        tokio::time::timeout(WAIT, async {
            let ticking = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let ticks = tokio::spawn({
                let ticking = ticking.clone();
                async move {
                    let mut largest = Duration::ZERO;
                    while ticking.load(std::sync::atomic::Ordering::Relaxed) {
                        let before = Instant::now();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        largest = largest.max(before.elapsed());
                    }
                    largest
                }
            });
            let long = d.run(sleep, 2.0);
            let ids: Vec<_> = (0..10_000u64).map(|i| d.run(echo::<u64>(), i)).collect();
            let mut set = tokio::task::JoinSet::new();
            for (i, id) in ids.into_iter().enumerate() {
                let d = d.clone();
                set.spawn(async move { (i as u64, d.result(id).await) });
            }
            let threads_during = threads();
            let slept = d.result(long).await;
            let mut wrong = Vec::new();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((i, Ok(v))) if v == i => {}
                    other => wrong.push(format!("{other:?}")),
                }
            }
            ticking.store(false, std::sync::atomic::Ordering::Relaxed);
            let gap = ticks.await.unwrap_or(Duration::MAX);
            check(slept == Ok(2.0), format!("the long task: {slept:?}"))?;
            check(wrong.is_empty(), format!("{} wrong: {:?}", wrong.len(), wrong.first()))?;
            Ok::<_, Failed>((gap, threads_during?))
        })
        .await
    });
    let (largest_gap, threads_during) = awaited.map_err(|_| "the awaits did not resolve")??;
    println!(
        "largest gap between 10 ms ticks: {largest_gap:?}; threads {threads_before} → {threads_during}"
    );
    check(largest_gap < Duration::from_secs(1), format!("the runtime stalled {largest_gap:?}"))?;
    check(
        threads_during <= threads_before + 4,
        format!("threads went from {threads_before} to {threads_during}"),
    )
}

fn ten_thousand_awaits_on_one_thread_multicore() -> Result<(), Failed> {
    ten_thousand_awaits(MulticoreDispatcher::new(2).map_err(fail)?)
}

fn ten_thousand_awaits_on_one_thread_on_a_cluster() -> Result<(), Failed> {
    let c = cluster()?;
    ten_thousand_awaits(driver(&c.server.addr))
}

/// Waits (read every 20 ms: another process writes it) until `path` holds a pid; returns it.
fn pid_in(path: &std::path::Path) -> Result<u32, Failed> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(pid) =
            std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u32>().ok())
        {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no pid in {} within {WAIT:?}", path.display()).into())
}

/// Waits until process `pid` is gone.
fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A dropped future leaves its task running, its result fetchable; one marked
/// `abort_on_drop`, dropped by a `select!` whose timeout came first, cancels its task, whose
/// process group is killed, and its result is dropped when it comes.
fn dropped_and_aborted<B: Backend>(d: Dispatcher<B>) -> Result<(), Failed> {
    let runtime = current_thread()?;
    let marker = TempFile::new("left-running", b"").map_err(fail)?;
    let _ = std::fs::remove_file(&marker.path);
    let script = format!("sleep 0.5; echo done > '{}'; echo finished", marker.arg());
    let left = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    let pidfile = TempFile::new("aborted-child", b"").map_err(fail)?;
    let script = format!("sleep 60 & echo $! > '{}'; wait", pidfile.arg());
    let aborted = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    runtime.block_on(async {
        // Dropped before it is ready: nothing happens to the task.
        let timed_out = tokio::time::timeout(Duration::from_millis(50), d.result(left)).await;
        check(timed_out.is_err(), "the first task was not done after 50 ms")?;
        let child = tokio::task::spawn_blocking({
            let path = pidfile.path.clone();
            move || pid_in(&path)
        });
        let child = child.await.map_err(fail)??;
        tokio::select! {
            r = d.result(aborted).abort_on_drop() => {
                return Err(fail(format!("the hanging task ended: {r:?}")));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        check(gone(child), format!("the aborted task's child {child} is still alive"))?;
        Ok::<_, Failed>(())
    })?;
    // The first task ran to its end, and its result waits in the dispatcher.
    let r = d.get_results_with(&[left], Fetch::default().within(WAIT)).map_err(fail)?;
    let out = r.into_iter().next().ok_or("no result")?.map_err(fail)?;
    check(out.stdout == b"finished\n", format!("{out:?}"))?;
    check(marker.path.exists(), "the dropped future's task ran to its end")?;
    // The aborted task's result was dropped once it came.
    let deadline = Instant::now() + WAIT;
    while d.pending() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(d.pending() == 0, "the aborted task ended")?;
    match d.get_results(&[aborted]) {
        Err(DispatchError::AlreadyFetched(_)) => Ok(()),
        other => Err(format!("the aborted task's result was kept: {other:?}").into()),
    }
}

fn dropped_futures_leave_their_task_and_aborted_ones_cancel_it_multicore() -> Result<(), Failed> {
    dropped_and_aborted(MulticoreDispatcher::new(2).map_err(fail)?)
}

fn dropped_futures_leave_their_task_and_aborted_ones_cancel_it_on_a_cluster() -> Result<(), Failed>
{
    let c = cluster()?;
    dropped_and_aborted(driver(&c.server.addr))
}

/// Shutting the dispatcher down (from another thread) wakes a pending future with its task's
/// `Cancelled`.
fn shutdown_wakes<B: Backend + 'static>(d: Dispatcher<B>) -> Result<(), Failed> {
    let d = Arc::new(d);
    let runtime = current_thread()?;
    let id = d.run(sleep, 60.0);
    let stopper = {
        let d = d.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            d.shutdown();
        })
    };
    let started = Instant::now();
    let r = runtime.block_on(async { tokio::time::timeout(WAIT, d.result(id)).await });
    let r = r.map_err(fail)?;
    stopper.join().map_err(|_| "the stopping thread panicked")?;
    check(matches!(r, Err(TaskError::Cancelled { .. })), format!("{r:?}"))?;
    check(started.elapsed() < Duration::from_secs(30), "woken at the shutdown")
}

fn shutdown_wakes_pending_futures_multicore() -> Result<(), Failed> {
    shutdown_wakes(MulticoreDispatcher::new(1).map_err(fail)?)
}

fn shutdown_wakes_pending_futures_on_a_cluster() -> Result<(), Failed> {
    let c = cluster()?;
    shutdown_wakes(driver(&c.server.addr))
}

/// `results` keeps the order of its ids, `completed` yields in finishing order, and
/// `join_async` takes what is left; each result once.
fn results_in_order_and_as_they_complete() -> Result<(), Failed> {
    let d = MulticoreDispatcher::new(2).map_err(fail)?;
    let runtime = current_thread()?;
    let within = runtime.block_on(async {
        tokio::time::timeout(WAIT, async {
            let ids: Vec<_> = [0.3, 0.01, 0.1].iter().map(|&s| d.run(sleep, s)).collect();
            let in_order = d.results(&ids).await.map_err(fail)?;
            check(in_order == [Ok(0.3), Ok(0.01), Ok(0.1)], format!("{in_order:?}"))?;
            let again = d.results(&ids[..1]).await;
            check(matches!(again, Err(DispatchError::AlreadyFetched(_))), format!("{again:?}"))?;
            // On two workers 0.6 and 0.05 start together, then 0.2 on the freed one (done at 0.25).
            let ids: Vec<_> = [0.6, 0.05, 0.2].iter().map(|&s| d.run(sleep, s)).collect();
            let mut stream = d.completed(&ids);
            let mut order = Vec::new();
            while let Some((_, r)) = stream.next().await {
                order.push(r.map_err(fail)?);
            }
            check(order == [0.05, 0.2, 0.6], format!("completion order {order:?}"))?;
            drop(stream);
            let left = d.run(echo::<u64>(), 7);
            let joined = d.join_async().await;
            check(joined.len() == 1 && joined[0].decode::<u64>() == Ok(7), format!("{joined:?}"))?;
            let taken = d.results(&[left]).await;
            check(matches!(taken, Err(DispatchError::AlreadyFetched(_))), "join_async took it")?;
            Ok::<_, Failed>(())
        })
        .await
    });
    within.map_err(|_| "the awaits did not resolve")?
}

/// A blocking wait made on a current-thread runtime's own thread fails at once, naming the
/// async call; on a multi-thread runtime it waits without stalling the other tasks.
fn a_blocking_wait_inside_a_runtime_fails_at_once_or_does_not_stall() -> Result<(), Failed> {
    let d = MulticoreDispatcher::new(2).map_err(fail)?;
    let id = d.run(sleep, 1.0);
    let started = Instant::now();
    let refused = current_thread()?.block_on(async { d.get_results(&[id]) });
    match refused {
        Err(e @ DispatchError::WouldStall { .. }) => {
            check(e.to_string().contains("dispatcher.results(&ids)"), format!("{e}"))?
        }
        other => return Err(format!("expected WouldStall, got {other:?}").into()),
    }
    check(started.elapsed() < Duration::from_millis(500), "refused at once, not after the wait")?;
    // The iterator, which cannot return the error, panics with it.
    let rt = current_thread()?;
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async { d.as_completed(&[id]).next().map(|(_, r)| r) })
    }));
    let message = match &panicked {
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
        Ok(r) => return Err(format!("as_completed waited on the runtime: {r:?}").into()),
    };
    check(message.contains("dispatcher.completed(&ids)"), format!("panicked with {message:?}"))?;
    // Inside spawn_blocking of the same kind of runtime, it waits (the iterator's panic left
    // the result in the dispatcher).
    let d = Arc::new(d);
    let waited = current_thread()?.block_on({
        let d = d.clone();
        async move { tokio::task::spawn_blocking(move || d.get_results(&[id])).await }
    });
    check(matches!(waited, Ok(Ok(ref r)) if r == &[Ok(1.0)]), format!("{waited:?}"))?;
    // On a multi-thread runtime the worker hands its other tasks over while it waits.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(fail)?;
    let id = d.run(sleep, 1.0);
    let (r, largest) = runtime.block_on({
        let d = d.clone();
        async move {
            let ticker = tokio::spawn(async {
                let mut largest = Duration::ZERO;
                for _ in 0..100 {
                    let before = Instant::now();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    largest = largest.max(before.elapsed());
                }
                largest
            });
            let waiter = tokio::spawn(async move { d.get_results(&[id]) });
            let r = waiter.await;
            (r, ticker.await.unwrap_or(Duration::MAX))
        }
    });
    check(matches!(r, Ok(Ok(ref v)) if v == &[Ok(1.0)]), format!("{r:?}"))?;
    check(largest < Duration::from_millis(500), format!("the runtime stalled {largest:?}"))
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(ten_thousand_awaits_on_one_thread_multicore),
        trial!(ten_thousand_awaits_on_one_thread_on_a_cluster),
        trial!(dropped_futures_leave_their_task_and_aborted_ones_cancel_it_multicore),
        trial!(dropped_futures_leave_their_task_and_aborted_ones_cancel_it_on_a_cluster),
        trial!(shutdown_wakes_pending_futures_multicore),
        trial!(shutdown_wakes_pending_futures_on_a_cluster),
        trial!(results_in_order_and_as_they_complete),
        trial!(a_blocking_wait_inside_a_runtime_fails_at_once_or_does_not_stall),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
