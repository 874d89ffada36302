//! Task graphs on real processes, on both dispatchers (a cluster of the real server binary and
//! an agent serving this program's tasks): a result as another task's argument, a pipeline and
//! a diamond with their values checked; a failed task failing every descendant at once, naming
//! it; `after` and `after_any`; a cancel reaching the dependents; a bad handle refused with
//! nothing queued.
//!
//! The workers (and the cluster's agent) are this test binary re-executed, so `main` calls
//! `blitzen::worker_main()` and `own_agent_main()` before handing over to the test harness.

use std::time::{Duration, Instant};

use blitzen::{Backend, DispatchError, Dispatcher, Fetch, MulticoreDispatcher, TaskError, sleep};
use blitzen_tests::cluster::{Process, ServerProcess, TempFile, driver, start_server};
use blitzen_tests::proxy::Proxy;
use blitzen_tests::tally::{Tally, counted, own_agent_main, start_own_agent};
use blitzen_tests::{check, fail, trial};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

#[blitzen::task]
fn load(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[blitzen::task]
fn evens(values: Vec<u64>) -> Vec<u64> {
    values.into_iter().filter(|v| v % 2 == 0).collect()
}

#[blitzen::task]
fn total(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[blitzen::task]
fn double(x: u64) -> u64 {
    2 * x
}

#[blitzen::task]
fn add_one(x: u64) -> u64 {
    x + 1
}

/// Order matters: `merge(1, 2)` is 1002.
#[blitzen::task]
fn merge(a: u64, b: u64) -> u64 {
    a * 1000 + b
}

#[blitzen::task]
fn scaled(values: Vec<u64>, k: u64) -> u64 {
    k * values.iter().sum::<u64>()
}

#[blitzen::task]
fn halve(x: f64) -> f64 {
    x / 2.0
}

/// The length of `data` and the sum of every 4096th byte, and whether `data` is this worker's
/// mapping of a file of its agent's cache of shared values itself: not received through the
/// worker's pipe, not copied.
#[blitzen::task]
fn mapped_sum(data: blitzen::Blob) -> (u64, u64, bool) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let at = data.as_ptr() as usize;
    let shared = |l: &&str| l.contains("/blitzen-cache-") || l.contains("/blitzen-shares-");
    let mapped = maps.lines().filter(shared).any(|l| {
        let range = l.split_whitespace().next().unwrap_or_default();
        let (start, end) = range.split_once('-').unwrap_or_default();
        let (start, end) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16));
        matches!((start, end), (Ok(s), Ok(e)) if s <= at && at + data.len() <= e)
    });
    (data.len() as u64, sampled(&data), mapped)
}

fn sampled(data: &[u8]) -> u64 {
    data.iter().step_by(4096).map(|&b| u64::from(b)).sum()
}

#[blitzen::task]
fn broken(message: String) -> Result<u64, String> {
    Err(message)
}

/// Writes `path`: proof that it ran.
#[blitzen::task]
fn mark(path: String) -> Result<(), String> {
    std::fs::write(&path, b"ran").map_err(|e| e.to_string())
}

/// A cluster: the real server binary and this program as its agent (2 workers).
struct Cluster {
    _agent: Process,
    server: ServerProcess,
}

fn cluster(name: &str) -> Result<Cluster, Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let agent = start_own_agent(&server.addr, 2, name, Duration::from_millis(500))?;
    Ok(Cluster { _agent: agent, server })
}

fn one<B: Backend, O: serde::de::DeserializeOwned>(
    d: &Dispatcher<B>,
    id: blitzen::TaskId<O>,
) -> Result<Result<O, TaskError>, Failed> {
    let mut r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    r.pop().ok_or_else(|| "no result".into())
}

/// load → evens → total, and a diamond: root feeding `double` and `add_one`, whose results
/// `merge` takes in order; a value and a handle mixed among the arguments.
fn pipeline_and_diamond<B: Backend>(d: Dispatcher<B>) -> Result<(), Failed> {
    let loaded = d.run(load, 10);
    let kept = d.submit(evens, loaded).map_err(fail)?;
    let summed = d.submit(total, kept).map_err(fail)?;
    check(one(&d, summed)? == Ok(20), "0 + 2 + 4 + 6 + 8")?;

    let root = d.run(double, 3);
    let left = d.submit(double, root).map_err(fail)?;
    let right = d.submit(add_one, root).map_err(fail)?;
    let bottom = d.submit(merge, (left, right)).map_err(fail)?;
    let mixed = d.submit(merge, (7u64, right)).map_err(fail)?;
    // The intermediate results stay fetchable: a dependent took a copy.
    let got = d.get_results_with(&[bottom, mixed, left], Fetch::default().within(WAIT));
    check(got.map_err(fail)? == [Ok(12_007), Ok(7_007), Ok(12)], "diamond values")?;
    // A handle whose task is done (and still in the dispatcher) works too.
    let late = d.submit(add_one, right).map_err(fail)?;
    check(one(&d, late)? == Ok(8), "a dependent of a finished task")?;
    check(d.stats().duplicates == 0, "no result twice")
}

fn a_pipeline_and_a_diamond_give_their_values_multicore() -> Result<(), Failed> {
    pipeline_and_diamond(MulticoreDispatcher::new(2).map_err(fail)?)
}

fn a_pipeline_and_a_diamond_give_their_values_on_a_cluster() -> Result<(), Failed> {
    let c = cluster("graph-values")?;
    pipeline_and_diamond(driver(&c.server.addr))
}

/// A failed root: its children, grandchildren and a task that was to run after one of them all
/// end `DependencyFailed` naming the root with its own error, and none ran; a task set to run
/// after the root whatever its end runs.
fn failure_reaches_every_descendant<B: Backend>(d: Dispatcher<B>) -> Result<(), Failed> {
    let never = TempFile::new("never-ran", b"").map_err(fail)?;
    let _ = std::fs::remove_file(&never.path);
    let anyway = TempFile::new("ran-anyway", b"").map_err(fail)?;
    let _ = std::fs::remove_file(&anyway.path);
    let started = Instant::now();
    let root = d.run(broken, "the input is corrupt".to_string());
    let child = d.submit(double, root).map_err(fail)?;
    let grandchild = d.submit(merge, (child, 5u64)).map_err(fail)?;
    let marked = d.after(&[grandchild]).run(mark, never.arg().to_string()).map_err(fail)?;
    let cleaned = d.after_any(&[root]).run(mark, anyway.arg().to_string()).map_err(fail)?;
    for (what, r) in [
        ("child", one(&d, child)?.map(|_| ())),
        ("grandchild", one(&d, grandchild)?.map(|_| ())),
        ("the task after the grandchild", one(&d, marked)?),
    ] {
        match r {
            Err(TaskError::DependencyFailed { task, error, .. }) => {
                check(task == root.seq(), format!("{what} names task {task}"))?;
                let text = error.to_string();
                check(
                    matches!(*error, TaskError::Returned { .. })
                        && text.contains("the input is corrupt"),
                    format!("{what}: the root's error: {text}"),
                )?;
            }
            other => return Err(format!("{what}: {other:?}").into()),
        }
    }
    check(!never.path.exists(), "a task after a failed one did not run")?;
    check(one(&d, cleaned)? == Ok(()), "the after_any task ran")?;
    check(anyway.path.exists(), "its file is there")?;
    check(started.elapsed() < Duration::from_secs(20), "settled at once, no wait")?;
    let root_error = one(&d, root)?;
    check(matches!(root_error, Err(TaskError::Returned { .. })), format!("{root_error:?}"))
}

fn a_failed_task_fails_every_descendant_at_once_multicore() -> Result<(), Failed> {
    failure_reaches_every_descendant(MulticoreDispatcher::new(2).map_err(fail)?)
}

fn a_failed_task_fails_every_descendant_at_once_on_a_cluster() -> Result<(), Failed> {
    let c = cluster("graph-failures")?;
    failure_reaches_every_descendant(driver(&c.server.addr))
}

/// Cancelling a running task fails its dependents naming the cancel; cancelling a waiting task
/// ends it `Cancelled` and leaves its input running; a shutdown settles waiting tasks too.
fn cancels<B: Backend>(d: Dispatcher<B>, server: Option<&ServerProcess>) -> Result<(), Failed> {
    let slow = d.run(sleep, 30.0);
    let waiting = d.submit(halve, slow).map_err(fail)?;
    let stats = d.stats();
    check(stats.pending == 2, format!("both pending: {stats:?}"))?;
    match server {
        // The server holds it: it is told apart in the server's status.
        Some(server) => {
            let deadline = Instant::now() + WAIT;
            loop {
                let status = server.status().map_err(fail)?;
                let seen = &status["server"]["waiting"];
                if seen == 1 && status["sessions"][0]["waiting"] == 1 {
                    break;
                }
                check(Instant::now() < deadline, format!("waiting apart: {status}"))?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None => check(stats.waiting == 1, format!("waiting apart: {stats:?}"))?,
    }
    let other_slow = d.run(sleep, 0.2);
    let withdrawn = d.submit(halve, other_slow).map_err(fail)?;
    d.cancel(&withdrawn).map_err(fail)?;
    match one(&d, withdrawn)? {
        Err(TaskError::Cancelled { .. }) => {}
        other => return Err(format!("the withdrawn task: {other:?}").into()),
    }
    check(one(&d, other_slow)? == Ok(0.2), "its input ran on")?;
    d.cancel(&slow).map_err(fail)?;
    match one(&d, waiting)? {
        Err(TaskError::DependencyFailed { task, error, .. }) if task == slow.seq() => check(
            matches!(*error, TaskError::Cancelled { .. }),
            format!("the cancel is named: {error}"),
        )?,
        other => return Err(format!("the waiting task: {other:?}").into()),
    }
    let last = d.run(sleep, 30.0);
    let parked = d.submit(halve, last).map_err(fail)?;
    d.shutdown();
    let r = d.get_results(&[parked]);
    check(
        matches!(
            r.as_deref(),
            Ok([Err(TaskError::Cancelled { .. } | TaskError::DependencyFailed { .. })])
        ),
        format!("a waiting task at shutdown: {r:?}"),
    )
}

fn cancels_reach_waiting_tasks_and_dependents_multicore() -> Result<(), Failed> {
    cancels(MulticoreDispatcher::new(2).map_err(fail)?, None)
}

fn cancels_reach_waiting_tasks_and_dependents_on_a_cluster() -> Result<(), Failed> {
    let c = cluster("graph-cancels")?;
    cancels(driver(&c.server.addr), Some(&c.server))
}

/// A shared value stands for an argument of many tasks, alone or beside values and results,
/// and outlives the tasks that took it.
fn shared_values<B: Backend>(d: Dispatcher<B>) -> Result<(), Failed> {
    let data: Vec<u64> = (1..=1_000).collect();
    let shared = d.share(&data).map_err(fail)?;
    let sums: Vec<_> =
        (0..20).map(|_| d.submit(total, &shared)).collect::<Result<_, _>>().map_err(fail)?;
    let k = d.run(add_one, 1);
    let mixed = d.submit(scaled, (&shared, k)).map_err(fail)?;
    let by_value = d.submit(scaled, (shared.clone(), 3u64)).map_err(fail)?;
    let got = d.get_results_with(&sums, Fetch::default().within(WAIT)).map_err(fail)?;
    check(got.iter().all(|r| *r == Ok(500_500)), format!("sums: {got:?}"))?;
    check(one(&d, mixed)? == Ok(1_001_000), "with a task's result beside it")?;
    check(one(&d, by_value)? == Ok(1_501_500), "with a value beside it")?;
    let later = d.submit(total, &shared).map_err(fail)?;
    check(one(&d, later)? == Ok(500_500), "still there for a later task")?;
    check(shared.encoded_len() > 1_000, format!("{shared:?}"))
}

fn a_shared_value_is_taken_by_many_tasks_multicore() -> Result<(), Failed> {
    shared_values(MulticoreDispatcher::new(2).map_err(fail)?)
}

fn a_shared_value_is_taken_by_many_tasks_on_a_cluster() -> Result<(), Failed> {
    let c = cluster("graph-shared")?;
    shared_values(driver(&c.server.addr))
}

/// A graph whose driver link is cut midway: every root and every dependent (held and released
/// by the server, some sent again after the cut) runs exactly once, each dependent with its
/// root's value, and no result comes twice but those the server was owed.
/// A shared value of 16 MiB taken by 20 tasks on one machine: each worker maps it from the
/// dispatcher's file rather than receiving it through its pipe, and the file goes once the
/// handle is dropped and the tasks are done.
fn a_shared_value_is_mapped_by_each_worker_multicore() -> Result<(), Failed> {
    const LEN: usize = 16 << 20;
    let d = MulticoreDispatcher::new(2).map_err(fail)?;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = (LEN as u64, sampled(&data), true);
    let shared = d.share(&blitzen::Blob::from(data)).map_err(fail)?;
    let ids: Vec<_> =
        (0..20).map(|_| d.submit(mapped_sum, &shared)).collect::<Result<_, _>>().map_err(fail)?;
    drop(shared);
    let got = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let wrong: Vec<_> = got.iter().filter(|r| **r != Ok(expected)).collect();
    check(wrong.is_empty(), format!("each task read it, mapped: {wrong:?}"))?;
    let prefix = format!("blitzen-shares-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|dir| std::fs::read_dir(dir.path()).into_iter().flatten().flatten())
        .map(|f| f.path().display().to_string())
        .collect();
    check(left.is_empty(), format!("the file goes with the last task and handle: {left:?}"))
}

/// A shared value of 64 MiB taken by 100 tasks on two agents: the server sends it to each agent
/// once (by its own count), every worker maps it from its agent's cache rather than receiving
/// it through its pipe, and the server forgets it once its handle is dropped and no task takes
/// it.
fn a_shared_value_crosses_to_each_agent_once() -> Result<(), Failed> {
    const LEN: usize = 64 << 20;
    let server = start_server(&[]).map_err(fail)?;
    let _a = start_own_agent(&server.addr, 2, "shared-a", Duration::from_millis(500))?;
    let _b = start_own_agent(&server.addr, 2, "shared-b", Duration::from_millis(500))?;
    let d = driver(&server.addr);
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = (LEN as u64, sampled(&data), true);
    let shared = d.share(&blitzen::Blob::from(data)).map_err(fail)?;
    let ids: Vec<_> =
        (0..100).map(|_| d.submit(mapped_sum, &shared)).collect::<Result<_, _>>().map_err(fail)?;
    let got = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let wrong: Vec<_> = got.iter().filter(|r| **r != Ok(expected)).collect();
    check(wrong.is_empty(), format!("each task read it, mapped: {wrong:?}"))?;
    let status = server.status().map_err(fail)?;
    let sent = status["server"]["shared_bytes_sent"].as_u64().unwrap_or(0);
    let encoded = shared.encoded_len() as u64;
    check(
        sent >= encoded && sent <= 2 * encoded,
        format!("{sent} bytes sent for a value of {encoded} to two agents"),
    )?;
    let cached: u64 = (status["agents"].as_array().into_iter().flatten())
        .map(|a| a["cache_used"].as_u64().unwrap_or(0))
        .sum();
    check(cached == sent, format!("the agents' caches hold what was sent: {status}"))?;
    drop(shared);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = server.status().map_err(fail)?;
        if status["server"]["shared_values"] == 0 {
            return Ok(());
        }
        check(
            Instant::now() < deadline,
            format!("the value is forgotten once unshared: {status}"),
        )?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_cut_driver_link_mid_graph_runs_every_task_once() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_own_agent(&server.addr, 2, "graph-cut", Duration::from_millis(500))?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let d = driver(&proxy.addr);
    let (roots, dependents) = (Tally::new().map_err(fail)?, Tally::new().map_err(fail)?);
    const N: u64 = 400;
    let root_ids: Vec<_> = (0..N).map(|i| d.run(counted, roots.args(i, 3))).collect();
    let dep_ids: Vec<_> = root_ids
        .iter()
        .map(|&root| {
            let (file, _, millis) = dependents.args(0, 3);
            d.submit(counted, (file, root, millis))
        })
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    // Cut once the first roots are done, while most are still to run: their dependents are
    // released while the link is down, and sent once it is back.
    let early = d.get_results_with(&root_ids[..50], Fetch::keep().within(WAIT)).map_err(fail)?;
    check(early.iter().all(|r| r.is_ok()), "the first roots")?;
    proxy.cut();
    let rest = d.get_results_with(&dep_ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u64, TaskError>> = (0..N).map(Ok).collect();
    check(rest == expected, format!("each dependent with its root's value: {rest:?}"))?;
    roots.check_each_once(0..N)?;
    dependents.check_each_once(0..N)?;
    let log = server.process.log_text();
    check(log.contains("driver reconnected to its session"), format!("resumed:\n{log}"))?;
    let owed = blitzen_tests::log_sum(&log, "driver reconnected to its session", "owed");
    let duplicates = d.stats().duplicates;
    check(duplicates <= owed, format!("{duplicates} results came twice, {owed} were owed"))
}

/// A handle of another dispatcher, or of a task whose result was fetched, is refused at
/// `submit` (and `after(...)` at `run`), and nothing is queued; `after_any` of a fetched task
/// runs (it ended).
fn bad_handles_are_refused_and_nothing_is_queued() -> Result<(), Failed> {
    let d = MulticoreDispatcher::new(1).map_err(fail)?;
    let other = MulticoreDispatcher::new(1).map_err(fail)?;
    let foreign = other.run(double, 1);
    let fetched = d.run(double, 2);
    check(one(&d, fetched)? == Ok(4), "fetched")?;
    let pending_before = d.pending();
    match d.submit(add_one, foreign) {
        Err(DispatchError::UnknownTask(_)) => {}
        other => return Err(format!("another dispatcher's handle: {other:?}").into()),
    }
    match d.submit(add_one, fetched) {
        Err(DispatchError::AlreadyFetched(_)) => {}
        other => return Err(format!("a fetched handle: {other:?}").into()),
    }
    match d.after(&[foreign]).run(double, 3) {
        Err(DispatchError::UnknownTask(_)) => {}
        other => return Err(format!("after another dispatcher's task: {other:?}").into()),
    }
    match d.after(&[fetched]).run(double, 3) {
        Err(DispatchError::AlreadyFetched(_)) => {}
        other => return Err(format!("after a fetched task: {other:?}").into()),
    }
    check(d.pending() == pending_before, "nothing was queued")?;
    let anyway = d.after_any(&[fetched]).run(double, 5).map_err(fail)?;
    check(one(&d, anyway)? == Ok(10), "after_any a fetched task")
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    own_agent_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(a_pipeline_and_a_diamond_give_their_values_multicore),
        trial!(a_pipeline_and_a_diamond_give_their_values_on_a_cluster),
        trial!(a_failed_task_fails_every_descendant_at_once_multicore),
        trial!(a_failed_task_fails_every_descendant_at_once_on_a_cluster),
        trial!(cancels_reach_waiting_tasks_and_dependents_multicore),
        trial!(cancels_reach_waiting_tasks_and_dependents_on_a_cluster),
        trial!(a_shared_value_is_taken_by_many_tasks_multicore),
        trial!(a_shared_value_is_taken_by_many_tasks_on_a_cluster),
        trial!(a_shared_value_is_mapped_by_each_worker_multicore),
        trial!(a_shared_value_crosses_to_each_agent_once),
        trial!(a_cut_driver_link_mid_graph_runs_every_task_once),
        trial!(bad_handles_are_refused_and_nothing_is_queued),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
