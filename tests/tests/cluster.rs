//! End-to-end tests of the cluster: the real `blitzen-server` and `blitzen-client` binaries on
//! 127.0.0.1 ephemeral ports, and `DistributedDispatcher` drivers.
//!
//! This binary has its own `main`: started with `BLITZEN_TEST_AGENT_FOR=ADDR`, it is a user's
//! own client (`spawn_client`) whose workers know the tasks below.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use blitzen::distributed::DistributedDispatcher;
use blitzen::distributed::Secret;
use blitzen::{
    CommandSpec, DispatchError, ExitReason, Fetch, RunOptions, TaskError, command, echo, sleep,
};
use blitzen_tests::cluster::{
    TempFile, binary, driver, free_port, start_agent, start_agent_with, start_program, start_server,
};
use blitzen_tests::tally::{Tally, counted, start_own_agent};
use blitzen_tests::trial;
use blitzen_tests::{check, fail};
use libtest_mimic::{Arguments, Failed};
use serde_bytes::ByteBuf;

/// A task the stock client does not have.
#[blitzen::task]
fn triple(x: u64) -> u64 {
    3 * x
}

const WAIT: Duration = Duration::from_secs(60);
const AGENT_ENV: &str = "BLITZEN_TEST_AGENT_FOR";
/// Started with it set to an address, this binary is a driver that runs one task there.
const DRIVER_ENV: &str = "BLITZEN_TEST_DRIVER_FOR";
/// Started with it set to `ADDR SESSION FILE`, this binary submits tasks in that session,
/// saves their ids to the file and detaches.
const DETACH_ENV: &str = "BLITZEN_TEST_DETACH";

/// An agent with an idle timeout runs its tasks, then, idle for 1 s, tells the server it is
/// leaving and exits 0; the server logs a departure, not a loss. Another, stopped by SIGTERM,
/// says goodbye too.
fn an_idle_agent_leaves_and_a_stopped_one_says_goodbye() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let d = driver(&server.addr);
    // Submitted first: an agent that started first could leave before they come.
    let ids: Vec<_> = (0..6).map(|_| d.run(sleep, 0.2)).collect();
    let mut idle =
        start_agent_with(&server.addr, 2, "idle-agent", &["--idle-timeout", "1"]).map_err(fail)?;
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results.iter().all(|r| r.decode::<f64>().is_ok()), format!("{results:?}"))?;
    let exited = idle.wait_exit(Duration::from_secs(20)).map_err(fail)?;
    let log = idle.log_text();
    check(exited.is_some_and(|s| s.success()), format!("the idle agent: {exited:?}\n{log}"))?;
    check(log.contains("left the cluster") && log.contains("idle timeout"), log.clone())?;
    check(
        server.process.wait_for_log("agent left", 1, Duration::from_secs(10)),
        server.process.log_text(),
    )?;
    let mut stopped = start_agent(&server.addr, 1, "stopped-agent").map_err(fail)?;
    check(server.process.wait_for_log("agent connected", 2, WAIT), server.process.log_text())?;
    let status = stopped.stop().map_err(fail)?;
    check(status.success(), format!("the stopped agent exited {status}"))?;
    check(
        server.process.wait_for_log("agent left", 2, Duration::from_secs(10)),
        server.process.log_text(),
    )?;
    let server_log = server.process.log_text();
    check(server_log.contains("stopped by a signal"), server_log.clone())?;
    check(!server_log.contains("agent disconnected"), format!("an agent was lost:\n{server_log}"))?;
    Ok(())
}

/// `PROGRAM agent …` (`blitzen::distributed::agent_main`): this program as an agent with the
/// flags of blitzen-client, serving its own tasks, leaving once idle.
fn a_program_started_with_agent_serves_its_own_tasks_with_the_agents_flags() -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    let help = std::process::Command::new(&exe).args(["agent", "--help"]).output().map_err(fail)?;
    let help = String::from_utf8_lossy(&help.stdout);
    check(
        help.contains("this program's tasks") && help.contains("--idle-timeout"),
        help.to_string(),
    )?;
    let server = start_server(&[]).map_err(fail)?;
    let d = driver(&server.addr);
    // Submitted first: an agent that started first could leave before they come.
    let ids: Vec<_> = (1..=10).map(|x| d.run(triple, x)).collect();
    let mut line = std::process::Command::new(&exe);
    line.args(["agent", "--server", &server.addr, "--workers", "2", "--idle-timeout", "1"]);
    let mut agent = start_program(line, "own-agent-mode").map_err(fail)?;
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let got: Vec<u64> = results.iter().filter_map(|r| r.decode().ok()).collect();
    check(got == (1..=10).map(|x| 3 * x).collect::<Vec<_>>(), format!("{got:?}"))?;
    let exited = agent.wait_exit(Duration::from_secs(30)).map_err(fail)?;
    let log = agent.log_text();
    check(exited.is_some_and(|s| s.success()), format!("{exited:?}\n{log}"))?;
    check(log.contains("left the cluster"), log.clone())?;
    Ok(())
}

fn distributed_trio_reports_finished_and_timed_out() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 5, "trio-agent").map_err(fail)?;
    let d = driver(&server.addr);
    let ids: Vec<_> = [0.2, 0.4, 0.6, 3.0, 3.5]
        .iter()
        .map(|&s| d.run_with_timeout(sleep, s, Duration::from_millis(1500)))
        .collect();
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    for (i, r) in results.iter().enumerate().take(3) {
        check(r.is_ok(), format!("task {i}: {r:?}"))?;
    }
    for r in &results[3..] {
        match r {
            Err(e @ TaskError::TimedOut { ctx, .. }) => {
                let host = ctx.worker.as_ref().and_then(|w| w.host.clone());
                check(host.as_deref() == Some("trio-agent"), format!("host in {e}"))?;
            }
            other => return Err(format!("expected a timeout, got {other:?}").into()),
        }
    }
    Ok(())
}

/// Priorities on a cluster: of the tasks queued before any agent came, the higher go first, in
/// submission order; a low one under a stream of higher ones still goes once it has risen to
/// them (one level a second of waiting), long before the stream ends.
fn priorities_order_the_queue_and_a_waiting_low_task_rises() -> Result<(), Failed> {
    const HIGHS: u64 = 200;
    let server = start_server(&[]).map_err(fail)?;
    let d = driver(&server.addr);
    let tally = Tally::new().map_err(fail)?;
    // 20 ms each: the priority-2 stream lasts 4 s; the low task rises to 2 in 2 s.
    let mut ids = vec![d.run(counted, tally.args(0, 20))];
    let high = RunOptions::default().with_priority(2);
    ids.extend((1..=HIGHS).map(|n| d.run_with(counted, tally.args(n, 20), high)));
    d.wait_accepted(WAIT).map_err(fail)?;
    let _agent = start_own_agent(&server.addr, 1, "priorities", Duration::from_secs(5))?;
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results.iter().all(Result::is_ok), format!("{results:?}"))?;
    tally.check_aging(HIGHS)
}

/// Two agents take tasks; the driver counts their workers.
fn two_agents_share_the_load() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _a = start_agent(&server.addr, 1, "agent-a").map_err(fail)?;
    let _b = start_agent(&server.addr, 3, "agent-b").map_err(fail)?;
    let d = driver(&server.addr);
    // The driver asks the server what its cluster is, as `blitzen-server status` does.
    let joined = server.process.wait_for_log("agent connected", 2, WAIT);
    check(joined, "both agents connected")?;
    let status = d.cluster_status().map_err(fail)?;
    let mut agents: Vec<_> = status.agents.iter().map(|a| (a.host.as_str(), a.workers)).collect();
    agents.sort();
    check(agents == [("agent-a", 1), ("agent-b", 3)], format!("{agents:?}"))?;
    check(d.cluster_workers().map_err(fail)? == 4, "four workers")?;
    let ids: Vec<_> = (0..8).map(|_| d.run(sleep, 0.3).untyped()).collect();
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let hosts: HashSet<String> =
        results.iter().filter_map(|r| r.worker.as_ref().and_then(|w| w.host.clone())).collect();
    check(results.iter().all(|r| r.is_ok()), "all succeed")?;
    check(hosts.len() == 2, format!("tasks ran on {hosts:?}"))
}

fn three_drivers_each_get_exactly_their_own_results() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "shared").map_err(fail)?;
    let addr = server.addr.clone();
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3u32)
            .map(|n| {
                let addr = addr.clone();
                scope.spawn(move || -> Result<(), String> {
                    let d = driver(&addr);
                    let ids: Vec<_> =
                        (0..300u32).map(|i| d.run(echo::<(u32, u32)>(), (n, i))).collect();
                    let got = d
                        .get_results_with(&ids, Fetch::default().within(WAIT))
                        .map_err(|e| e.to_string())?;
                    let want: Vec<(u32, u32)> = (0..300).map(|i| (n, i)).collect();
                    let got: Vec<(u32, u32)> =
                        got.into_iter().collect::<Result<_, _>>().map_err(|e| e.to_string())?;
                    if got != want {
                        return Err(format!("driver {n} got foreign or missing results"));
                    }
                    // Another driver's result for a task of the same number would be dropped as
                    // a second result: counted here.
                    let duplicates = d.stats().duplicates;
                    if duplicates > 0 {
                        return Err(format!("driver {n} dropped {duplicates} extra results"));
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("driver panicked".into())))
            .collect()
    });
    outcomes.into_iter().collect::<Result<Vec<()>, String>>().map(|_| ()).map_err(fail)
}

fn duration_ends_the_server_and_waiting_drivers_hear_why() -> Result<(), Failed> {
    let started = Instant::now();
    let mut server = start_server(&["--duration", "2"]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "doomed").map_err(fail)?;
    let d = driver(&server.addr);
    let id = d.run(sleep, 30.0);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    match &r[0] {
        Err(e @ TaskError::Lost { reason, .. }) => {
            check(reason.contains("shut down"), format!("{e}"))?;
        }
        other => return Err(format!("expected Lost, got {other:?}").into()),
    }
    let status = server.process.wait_exit(Duration::from_secs(10)).map_err(fail)?;
    check(status.is_some_and(|s| s.success()), format!("server exit: {status:?}"))?;
    check(started.elapsed() < Duration::from_secs(15), format!("took {:?}", started.elapsed()))
}

fn agent_started_before_the_server_connects_when_it_comes_up() -> Result<(), Failed> {
    let port = free_port().map_err(fail)?.to_string();
    let addr = format!("127.0.0.1:{port}");
    let _agent = start_agent(&addr, 1, "early").map_err(fail)?;
    std::thread::sleep(Duration::from_millis(500));
    let _server = start_server(&["--port", &port]).map_err(fail)?;
    let d = driver(&addr);
    let id = d.run(echo::<String>(), "hello".into());
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r[0].as_deref() == Ok("hello"), format!("{r:?}"))
}

fn agent_reconnects_to_a_restarted_server() -> Result<(), Failed> {
    let mut first = start_server(&[]).map_err(fail)?;
    let addr = first.addr.clone();
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let _agent = start_agent(&addr, 1, "faithful").map_err(fail)?;
    let d = driver(&addr);
    let id = d.run(echo::<u32>(), 1);
    check(
        d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?[0] == Ok(1),
        "before",
    )?;
    d.join();
    let status = first.process.stop().map_err(fail)?;
    check(status.success(), format!("first server exit {status:?}"))?;
    let _second = start_server(&["--port", &port]).map_err(fail)?;
    let d = driver(&addr);
    let id = d.run(echo::<u32>(), 2);
    check(
        d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?[0] == Ok(2),
        "after",
    )
}

fn ten_thousand_tasks_over_two_agents_each_return_once() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _a = start_own_agent(&server.addr, 1, "bulk-a", Duration::from_secs(5))?;
    let _b = start_own_agent(&server.addr, 1, "bulk-b", Duration::from_secs(5))?;
    let d = driver(&server.addr);
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..10_000).map(|i| d.run(counted, runs.args(i, 0)).untyped()).collect();
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let mut hosts = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        check(r.decode::<u64>().map_err(fail)? == i as u64, format!("task {i}"))?;
        hosts.extend(r.worker.as_ref().and_then(|w| w.host.clone()));
    }
    check(hosts.len() == 2, format!("hosts {hosts:?}"))?;
    runs.check_each_once(0..10_000)?;
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the driver dropped {duplicates} results sent twice"))
}

fn a_task_no_agent_has_waits_and_says_why() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "stock").map_err(fail)?;
    let d = driver(&server.addr);
    // Make sure the agent is there, so the reason is about the task, not a missing agent.
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    let id = d.run(triple, 2);
    match d.get_results_with(&[id], Fetch::default().within(Duration::from_secs(2))) {
        Err(e @ DispatchError::WaitTimedOut { .. }) => check(
            e.to_string().contains("no connected agent has a task named `triple`"),
            format!("{e}"),
        ),
        other => Err(format!("expected a wait with a reason, got {other:?}").into()),
    }
}

/// A task no agent has ends `Unrunnable` after its limit (per task, or the dispatcher's
/// default) instead of waiting for ever; one without a limit keeps waiting.
fn a_task_nobody_can_run_gives_up_after_its_unrunnable_limit() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "stock").map_err(fail)?;
    let d = driver(&server.addr).with_unrunnable_limit(Duration::from_millis(1500));
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    let own = d.run_with(triple, 2, RunOptions::default().with_unrunnable_limit(WAIT / 60));
    let default = d.run(triple, 3);
    let started = Instant::now();
    let results =
        d.get_results_with(&[own, default], Fetch::default().within(WAIT)).map_err(fail)?;
    for r in &results {
        match r {
            Err(e @ TaskError::Unrunnable { reason, .. }) => check(
                reason.contains("no connected agent has a task named `triple`")
                    && e.to_string().contains("unrunnable"),
                format!("{e}"),
            )?,
            other => return Err(format!("expected Unrunnable, got {other:?}").into()),
        }
    }
    check(started.elapsed() >= Duration::from_secs(1), "not before the limit")?;
    let patient = driver(&server.addr);
    let id = patient.run(triple, 4);
    match patient.get_results_with(&[id], Fetch::default().within(Duration::from_secs(2))) {
        Err(DispatchError::WaitTimedOut { .. }) => Ok(()),
        other => Err(format!("without a limit the task waits, got {other:?}").into()),
    }
}

/// `join_within` gives up saying why, keeps the results, and a later `join` has them all; the
/// server warns about the waiting task while it waits.
fn join_within_gives_up_with_the_reason_and_keeps_every_result() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _stock = start_agent(&server.addr, 1, "stock").map_err(fail)?;
    let d = driver(&server.addr);
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::keep().within(WAIT)).map_err(fail)?;
    d.run(triple, 5);
    match d.join_within(Duration::from_secs(2)) {
        Err(e @ DispatchError::WaitTimedOut { pending: 1, total: 2, .. }) => check(
            e.to_string().contains("no connected agent has a task named `triple`"),
            format!("{e}"),
        )?,
        other => return Err(format!("expected a timed-out join, got {other:?}").into()),
    }
    let log = server.process.log_text();
    check(log.contains("tasks are waiting for an agent"), format!("server warned:\n{log}"))?;
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(AGENT_ENV, &server.addr);
    let _own = start_program(program, "own-client").map_err(fail)?;
    let results = d.join_within(WAIT).map_err(fail)?;
    let values: Vec<_> = results.iter().map(|r| r.decode::<u64>()).collect();
    check(values == [Ok(1), Ok(15)], format!("{values:?}"))
}

/// A driver that detaches leaves its session on the server; a new process attaches to it with
/// the saved task ids and fetches every result. An unknown session is a clear error.
fn a_new_process_attaches_to_a_detached_session_and_fetches_its_results() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "worker").map_err(fail)?;
    let ids_file = TempFile::new("ids", b"").map_err(fail)?;
    let session = format!("attach-test-{}", std::process::id());
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(DETACH_ENV, format!("{} {session} {}", server.addr, ids_file.arg()));
    let out = program.output().map_err(fail)?;
    check(out.status.success(), String::from_utf8_lossy(&out.stderr))?;
    let text = std::fs::read_to_string(&ids_file.path).map_err(fail)?;
    let ids: Vec<blitzen::TaskId<f64>> = serde_json::from_str(&text).map_err(fail)?;
    check(ids.len() == 8, format!("saved {text}"))?;

    let d = DistributedDispatcher::attach(&server.addr, &session).map_err(fail)?;
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<f64, TaskError>> = (1..=8).map(|i| Ok(f64::from(i) / 10.0)).collect();
    check(results == expected, format!("{results:?}"))?;
    // New work in the attached session gets ids of its own.
    let more = d.run(echo::<u8>(), 9);
    check(ids.iter().all(|id| id.seq() != more.seq()), "a fresh id")?;
    check(
        d.get_results_with(&[more], Fetch::default().within(WAIT)).map_err(fail)? == [Ok(9)],
        "",
    )?;
    let duplicates = d.stats().duplicates;
    check(
        duplicates == 0,
        format!("the attached process dropped {duplicates} results sent twice"),
    )?;

    match DistributedDispatcher::attach(&server.addr, "no-such-session") {
        Err(e @ DispatchError::UnknownSession(_)) => {
            check(e.to_string().contains("no session `no-such-session`"), format!("{e}"))
        }
        other => Err(format!("expected an unknown session, got {other:?}").into()),
    }
}

fn users_own_client_runs_its_own_tasks() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(AGENT_ENV, &server.addr);
    let _agent = start_program(program, "own-client").map_err(fail)?;
    let d = driver(&server.addr);
    let id = d.run(triple, 14);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r[0] == Ok(42), format!("{r:?}"))
}

fn map_runs_over_the_cluster_in_order() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "mapper").map_err(fail)?;
    let d = driver(&server.addr);
    let got: Vec<u32> = d
        .map(echo::<u32>(), 0..500)
        .map_err(fail)?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check(got == (0..500).collect::<Vec<u32>>(), "map over the cluster keeps the order")
}

fn thirty_two_mib_payload_round_trips() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "big").map_err(fail)?;
    let d = driver(&server.addr);
    let data: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let id = d.run(echo::<ByteBuf>(), ByteBuf::from(data.clone()));
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let back = r.into_iter().next().ok_or("no result")?.map_err(fail)?;
    check(back.into_vec() == data, "payload differs")
}

/// Five 40 MiB arguments submitted at once (200 MiB, more than one message may carry) cross
/// every hop and come back as results, each its own; an argument larger than any message is
/// refused at once, saying so, instead of being lost on the way.
fn large_payloads_are_batched_within_the_frame_limit_and_too_large_is_refused() -> Result<(), Failed>
{
    let server = start_server(&[]).map_err(fail)?;
    let d = driver(&server.addr);
    let payload =
        |k: u32| -> Vec<u8> { (0..40 << 20).map(|i: u32| ((i + k) % 251) as u8).collect() };
    let payloads: Vec<Vec<u8>> = (0..5).map(payload).collect();
    // Submitted at once, and held by the server until the agent comes: it then hands them out
    // together (2 workers and as many again), and their results come back together.
    let ids: Vec<_> =
        payloads.iter().map(|p| d.run(echo::<ByteBuf>(), ByteBuf::from(p.clone()))).collect();
    let too_large = d.run(echo::<ByteBuf>(), ByteBuf::from(vec![0u8; 130 << 20]));
    d.wait_accepted(WAIT).map_err(fail)?;
    let agent = start_agent(&server.addr, 2, "large").map_err(fail)?;
    let r = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(|e| {
        format!("{e}\nserver:\n{}\nagent:\n{}", server.process.log_text(), agent.log_text())
    })?;
    for (k, back) in r.into_iter().enumerate() {
        let back = back.map_err(fail)?;
        check(back.into_vec() == payloads[k], format!("payload {k} differs"))?;
    }
    let refused = d.get_results_with(&[too_large], Fetch::default().within(WAIT)).map_err(fail)?;
    match &refused[0] {
        Err(e @ TaskError::Refused { reason, .. }) => {
            check(reason.contains("more than a message"), format!("{e}"))
        }
        other => Err(format!("a 130 MiB argument: {other:?}").into()),
    }
}

/// The first five tasks fit under the limit and run; the three past it are refused, saying why.
fn task_limit_refuses_the_excess_with_a_clear_error() -> Result<(), Failed> {
    let server = start_server(&["--task-limit", "5"]).map_err(fail)?;
    let d = driver(&server.addr);
    // Submitted before any agent is there, so that all eight are held at once.
    let ids: Vec<_> = (0..8).map(|_| d.run(sleep, 0.1)).collect();
    d.wait_accepted(WAIT).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "limited").map_err(fail)?;
    let r = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    for (i, x) in r.into_iter().enumerate() {
        match x {
            Ok(slept) if i < 5 => check(slept == 0.1, format!("task {i} returned {slept}"))?,
            Err(e @ TaskError::Refused { .. }) if i >= 5 => {
                check(e.to_string().contains("--task-limit"), format!("{e}"))?
            }
            other => return Err(format!("task {i}: {other:?}").into()),
        }
    }
    Ok(())
}

fn unreachable_server_is_a_clear_error_not_a_hang() -> Result<(), Failed> {
    let port = free_port().map_err(fail)?;
    let d = DistributedDispatcher::new(format!("127.0.0.1:{port}"))
        .with_connect_timeout(Duration::from_millis(500));
    let id = d.run(echo::<u8>(), 1);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    match &r[0] {
        Err(e @ TaskError::Lost { reason, .. }) => {
            check(reason.contains("cannot reach"), format!("{e}"))
        }
        other => Err(format!("expected Lost, got {other:?}").into()),
    }
}

/// Bad flags are refused at once with one clear line each, never accepted to hang or to
/// silence the log.
fn bad_flags_are_refused_at_once_with_one_clear_line() -> Result<(), Failed> {
    let cases: [(&str, &[&str], &str); 14] = [
        ("blitzen-server", &["--log-level", "bogus"], "`bogus` is not a level"),
        ("blitzen-client", &["--log-level", "debg"], "`debg` is not a level"),
        ("blitzen-client", &["--log-level", "info,bogus"], "`bogus` is not a level"),
        ("blitzen-client", &["--workers", "99999999999"], "more than the most allowed, 4096"),
        ("blitzen-client", &["--workers", "4294967297"], "more than the most allowed"),
        ("blitzen-client", &["--server", "127.0.0.1:99999"], "port 99999 is out of range"),
        ("blitzen-client", &["--server", "127.0.0.1:abc"], "`abc` is not a port number"),
        ("blitzen-client", &["--server="], "the server address is empty"),
        ("blitzen-server", &["--timeout", "0"], "must be more than 0 seconds"),
        ("blitzen-client", &["--secret-file", "/nonexistent/secret"], "/nonexistent/secret"),
        ("blitzen-client", &["--tls-pin", "xyz"], "`xyz` is not a SHA-256 fingerprint"),
        ("blitzen-client", &["--tls-ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem as a TLS CA"),
        (
            "blitzen-server",
            &["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"],
            "--tls-key need a shared secret",
        ),
        ("blitzen-server", &["--reattach-grace", "abc"], "`abc` is not a number of seconds"),
    ];
    for (program, args, expected) in cases {
        let mut cmd = std::process::Command::new(binary(program).map_err(fail)?);
        cmd.args(args).args(["--port", "1"]);
        let mut process = start_program(cmd, "bad-flag").map_err(fail)?;
        let status = process.wait_exit(Duration::from_secs(20)).map_err(fail)?;
        let stderr = process.log_text();
        let what = format!("{program} {}", args.join(" "));
        check(status.is_some_and(|s| !s.success()), format!("{what}: not refused: {stderr}"))?;
        check(stderr.contains(expected), format!("{what}: `{expected}` missing:\n{stderr}"))?;
        check(
            stderr.matches(expected).count() == 1,
            format!("{what}: said more than once:\n{stderr}"),
        )?;
    }
    Ok(())
}

/// A driver that cannot connect says at once that it retries, and for how long; one whose
/// server name does not resolve fails at once, saying so.
fn connecting_says_it_retries_and_a_bad_name_fails_at_once() -> Result<(), Failed> {
    let port = free_port().map_err(fail)?;
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(DRIVER_ENV, format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let out = program.output().map_err(fail)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retrying = stderr.lines().position(|l| l.contains("retrying for up to 3s"));
    let gave_up = stderr.lines().position(|l| l.contains("cannot reach the Blitzen server"));
    check(
        matches!((retrying, gave_up), (Some(r), Some(g)) if r < g),
        format!("the retry is announced before the end:\n{stderr}"),
    )?;
    check(started.elapsed() >= Duration::from_secs(2), "it did retry")?;

    let d = DistributedDispatcher::new("no-such-host.invalid")
        .with_connect_timeout(Duration::from_secs(60));
    let started = Instant::now();
    match d.connect() {
        Err(e @ DispatchError::Connect { .. }) => check(
            e.to_string().contains("cannot resolve `no-such-host.invalid:7464`"),
            format!("{e}"),
        )?,
        other => return Err(format!("expected a resolve error, got {other:?}").into()),
    }
    check(started.elapsed() < Duration::from_secs(30), "no retrying a name that does not resolve")
}

fn a_crashing_task_is_rerun_on_the_cluster_only_when_asked() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "crashy").map_err(fail)?;
    let d = driver(&server.addr);
    let mark = TempFile::new("crash-mark", b"").map_err(fail)?;
    let _ = std::fs::remove_file(&mark.path);
    // The first run kills its own worker (the shell's parent); the second finds the mark.
    let script = format!(
        "if [ -e '{0}' ]; then echo second run; else touch '{0}'; kill -KILL $PPID; sleep 5; fi",
        mark.arg()
    );
    let spec = || CommandSpec::new("sh").arg("-c").arg(script.clone());
    let retried = d.run_with(command, spec(), RunOptions::default().with_retries(1));
    let r = d.get_results_with(&[retried], Fetch::default().within(WAIT)).map_err(fail)?;
    let out = r.into_iter().next().ok_or("no result")?.map_err(fail)?;
    check(out.stdout == b"second run\n", format!("retried: {out:?}"))?;
    std::fs::remove_file(&mark.path).map_err(fail)?;
    let plain = d.run(command, spec());
    let r = d.get_results_with(&[plain], Fetch::default().within(WAIT)).map_err(fail)?;
    match &r[0] {
        Err(TaskError::WorkerCrashed { exit, .. }) => {
            check(*exit == ExitReason::Signal(9), format!("{exit:?}"))
        }
        other => Err(format!("expected a crash reported at once, got {other:?}").into()),
    }
}

fn wait_accepted_returns_once_the_server_holds_every_task() -> Result<(), Failed> {
    let server = start_server(&["--task-limit", "150"]).map_err(fail)?;
    let d = driver(&server.addr);
    check(d.wait_accepted(WAIT).is_ok(), "nothing submitted: nothing to wait for")?;
    // No agent: the tasks can only be queued (or refused past the limit), never run.
    let ids: Vec<_> = (0..200u64).map(|i| d.run(echo::<u64>(), i)).collect();
    d.wait_accepted(WAIT).map_err(fail)?;
    // Taken means answered where refused: the 50 over the limit are settled already, and the
    // 150 under it are held, queued.
    let refused = d.get_results_with(&ids[150..], Fetch::default().within(Duration::ZERO));
    let refused = refused.map_err(fail)?;
    check(refused.iter().all(|r| matches!(r, Err(TaskError::Refused { .. }))), "refused")?;
    match d.get_results_with(&ids[..150], Fetch::keep().within(Duration::ZERO)) {
        Err(DispatchError::WaitTimedOut { pending: 150, .. }) => {}
        other => return Err(format!("the first 150 are queued, not {other:?}").into()),
    }
    drop(server);
    let unreachable = driver(&format!("127.0.0.1:{}", free_port().map_err(fail)?))
        .with_connect_timeout(Duration::from_millis(300));
    let _ = unreachable.run(echo::<u64>(), 1);
    let e = unreachable.wait_accepted(WAIT).err().ok_or("no server, yet accepted")?;
    check(e.to_string().contains("cannot reach"), &e)
}

const SECRET: &[u8] = b"the cluster's shared secret, 41 bytes long\n";

/// The error a driver gets when connecting.
fn connect_error(d: &DistributedDispatcher) -> Result<String, Failed> {
    match d.connect() {
        Ok(()) => Err("the driver was admitted".into()),
        Err(e) => Ok(e.to_string()),
    }
}

fn shared_secret_admits_who_knows_it_and_refuses_the_rest() -> Result<(), Failed> {
    let secret = TempFile::new("secret", SECRET).map_err(fail)?;
    let server = start_server(&["--secret-file", secret.arg()]).map_err(fail)?;
    let _agent = start_agent_with(&server.addr, 1, "trusted", &["--secret-file", secret.arg()])
        .map_err(fail)?;
    let d = driver(&server.addr).with_secret_file(&secret.path).map_err(fail)?;
    let id = d.run(echo::<u64>(), 41);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[..], [Ok(41)]), format!("the trusted pair runs tasks: {r:?}"))?;

    let wrong = Secret::new("a different secret of some length", "test").map_err(fail)?;
    let e = connect_error(&driver(&server.addr).with_secret(wrong.clone()))?;
    check(e.contains("wrong secret"), format!("driver with another secret: {e}"))?;
    let e = connect_error(&driver(&server.addr))?;
    check(e.contains("requires a shared secret"), format!("driver without a secret: {e}"))?;
    let log = server.process.log_text();
    check(log.contains("wrong secret"), format!("the server logs the wrong secret:\n{log}"))?;
    let refused = log.contains("peer refused: this server requires a shared secret");
    check(refused, format!("the server logs the missing secret:\n{log}"))?;

    // An agent with the wrong secret stops with the reason instead of retrying forever.
    let wrong_file = TempFile::new("wrong", b"a different secret of some length").map_err(fail)?;
    let mut agent =
        start_agent_with(&server.addr, 1, "intruder", &["--secret-file", wrong_file.arg()])
            .map_err(fail)?;
    let status = agent.wait_exit(WAIT).map_err(fail)?;
    check(status.is_some_and(|s| !s.success()), format!("the agent exits: {status:?}"))?;
    let log = agent.log_text();
    check(log.contains("wrong secret"), format!("the agent says why:\n{log}"))?;
    // The trusted driver is still served.
    let id = d.run(echo::<u64>(), 42);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[..], [Ok(42)]), format!("still served: {r:?}"))
}

fn the_agents_secret_does_not_let_a_driver_in() -> Result<(), Failed> {
    let agents = TempFile::new("agents", b"the secret of the worker hosts").map_err(fail)?;
    let drivers = TempFile::new("drivers", b"the secret of those who submit").map_err(fail)?;
    let server =
        start_server(&["--agent-secret-file", agents.arg(), "--driver-secret-file", drivers.arg()])
            .map_err(fail)?;
    let _agent = start_agent_with(&server.addr, 1, "worker-host", &["--secret-file", agents.arg()])
        .map_err(fail)?;
    let e = connect_error(&driver(&server.addr).with_secret_file(&agents.path).map_err(fail)?)?;
    check(e.contains("wrong secret"), format!("a driver with the agents' secret: {e}"))?;
    let d = driver(&server.addr).with_secret_file(&drivers.path).map_err(fail)?;
    let id = d.run(echo::<u64>(), 7);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[..], [Ok(7)]), format!("the drivers' secret works: {r:?}"))
}

fn a_side_with_a_secret_does_not_trust_an_open_server() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let secret = Secret::new(SECRET, "test").map_err(fail)?;
    let e = connect_error(&driver(&server.addr).with_secret(secret))?;
    check(e.contains("does not authenticate"), &e)
}

fn spawn_server_serves_its_duration_and_keeps_the_public_bind_rule() -> Result<(), Failed> {
    // Without a secret, a public address is refused before anything is bound.
    let public = DistributedDispatcher::new("0.0.0.0:0");
    match public.spawn_server(Duration::from_secs(30)) {
        Err(e @ DispatchError::Serve(_)) => {
            check(e.to_string().contains("without a secret"), format!("{e}"))?
        }
        other => return Err(format!("a public bind without a secret: {other:?}").into()),
    }
    // On loopback it serves for its duration, then returns.
    let port = free_port().map_err(fail)?;
    let local = DistributedDispatcher::new(format!("127.0.0.1:{port}"));
    let started = Instant::now();
    local.spawn_server(Duration::from_millis(300)).map_err(fail)?;
    let took = started.elapsed();
    check(took >= Duration::from_millis(300) && took < WAIT, format!("served {took:?}"))?;
    // With a data directory, it keeps its state there.
    let dir = std::env::temp_dir().join(format!("blitzen-test-{}-spawned", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let durable = DistributedDispatcher::new(format!("127.0.0.1:{port}")).with_data_dir(&dir);
    durable.spawn_server(Duration::from_millis(100)).map_err(fail)?;
    let made = dir.join("blitzen.redb").exists();
    let _ = std::fs::remove_dir_all(&dir);
    check(made, "the data directory holds the database")
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    blitzen::distributed::agent_main(blitzen::tasks![]);
    blitzen_tests::tally::own_agent_main();
    if let Ok(server) = std::env::var(AGENT_ENV) {
        // A user's own client: the seed's client script, its tasks in this program.
        return match DistributedDispatcher::new(server).spawn_client(blitzen::tasks![], 2) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Ok(spec) = std::env::var(DETACH_ENV) {
        let [server, session, file] = spec.split(' ').collect::<Vec<_>>()[..] else {
            return std::process::ExitCode::FAILURE;
        };
        let d = DistributedDispatcher::new(server).with_session(session);
        let ids: Vec<_> = (1..=8).map(|i| d.run(sleep, f64::from(i) / 10.0)).collect();
        let saved = serde_json::to_string(&ids).map_err(|e| e.to_string());
        let written = saved.and_then(|text| std::fs::write(file, text).map_err(|e| e.to_string()));
        let accepted = d.wait_accepted(WAIT).map_err(|e| e.to_string());
        d.detach();
        return match written.and(accepted) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("detaching driver: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Ok(server) = std::env::var(DRIVER_ENV) {
        let d = DistributedDispatcher::new(server).with_connect_timeout(Duration::from_secs(3));
        let id = d.run(echo::<u8>(), 1);
        return match d.get_results(&[id]) {
            Ok(r) => {
                eprintln!("driver: {r:?}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("driver: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    let trials = vec![
        trial!(distributed_trio_reports_finished_and_timed_out),
        trial!(an_idle_agent_leaves_and_a_stopped_one_says_goodbye),
        trial!(a_program_started_with_agent_serves_its_own_tasks_with_the_agents_flags),
        trial!(two_agents_share_the_load),
        trial!(priorities_order_the_queue_and_a_waiting_low_task_rises),
        trial!(three_drivers_each_get_exactly_their_own_results),
        trial!(duration_ends_the_server_and_waiting_drivers_hear_why),
        trial!(agent_started_before_the_server_connects_when_it_comes_up),
        trial!(agent_reconnects_to_a_restarted_server),
        trial!(ten_thousand_tasks_over_two_agents_each_return_once),
        trial!(a_task_no_agent_has_waits_and_says_why),
        trial!(users_own_client_runs_its_own_tasks),
        trial!(a_new_process_attaches_to_a_detached_session_and_fetches_its_results),
        trial!(a_task_nobody_can_run_gives_up_after_its_unrunnable_limit),
        trial!(join_within_gives_up_with_the_reason_and_keeps_every_result),
        trial!(thirty_two_mib_payload_round_trips),
        trial!(large_payloads_are_batched_within_the_frame_limit_and_too_large_is_refused),
        trial!(map_runs_over_the_cluster_in_order),
        trial!(task_limit_refuses_the_excess_with_a_clear_error),
        trial!(unreachable_server_is_a_clear_error_not_a_hang),
        trial!(connecting_says_it_retries_and_a_bad_name_fails_at_once),
        trial!(bad_flags_are_refused_at_once_with_one_clear_line),
        trial!(a_crashing_task_is_rerun_on_the_cluster_only_when_asked),
        trial!(wait_accepted_returns_once_the_server_holds_every_task),
        trial!(shared_secret_admits_who_knows_it_and_refuses_the_rest),
        trial!(the_agents_secret_does_not_let_a_driver_in),
        trial!(a_side_with_a_secret_does_not_trust_an_open_server),
        trial!(spawn_server_serves_its_duration_and_keeps_the_public_bind_rule),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
