//! End-to-end tests of the data directory: the real `blitzen-server` killed with SIGKILL and
//! started again on the same directory keeps its identity, its sessions, their queued tasks and
//! their unfetched results; a directory it cannot use is a clear error at start.

use std::path::PathBuf;
use std::time::Duration;

use blitzen::distributed::DistributedDispatcher;
use blitzen::{CommandSpec, DispatchError, Fetch, TaskError, command, echo, sleep};
use blitzen_tests::cluster::{
    Process, ServerProcess, binary, driver, free_port, start_agent, start_program, start_server,
};
use blitzen_tests::tally::{Tally, counted, start_own_agent};
use blitzen_tests::trial;
use blitzen_tests::{check, fail};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

/// A directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("blitzen-durable-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn durable_server(dir: &TempDir, port: u16, extra: &[&str]) -> Result<ServerProcess, Failed> {
    let port = port.to_string();
    let mut args = vec!["--port", port.as_str(), "--data-dir", dir.arg()];
    args.extend_from_slice(extra);
    start_server(&args).map_err(fail)
}

/// Queued tasks survive a `kill -9` of the server, run once it is back, and their results —
/// which nobody fetched — survive a second `kill -9` and reach a process that attaches to the
/// session.
fn queued_tasks_and_unfetched_results_survive_kill_9() -> Result<(), Failed> {
    let dir = TempDir::new("survive");
    let port = free_port().map_err(fail)?;
    let session = format!("durable-{}", std::process::id());
    let mut first = durable_server(&dir, port, &[])?;
    // No agent yet: the tasks are queued, and accepted only once saved.
    let d = driver(&first.addr).with_session(&session);
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..4).map(|i| d.run(counted, runs.args(i, 0))).collect();
    d.wait_accepted(WAIT).map_err(fail)?;
    d.detach();
    blitzen_tests::kill(first.process.pid());
    first.process.wait_exit(WAIT).map_err(fail)?;

    let mut second = durable_server(&dir, port, &["--log-level", "debug"])?;
    let restored = second.process.wait_for_log("restored from the data directory", 1, WAIT);
    let log = second.process.log_text();
    check(restored && log.contains("tasks=4"), format!("restored:\n{log}"))?;
    let _agent = start_own_agent(&second.addr, 2, "keeper", Duration::from_secs(5))?;
    let ran = second.process.wait_for_log("task finished", 4, WAIT);
    check(ran, format!("the queued tasks ran:\n{}", second.process.log_text()))?;
    // Nobody fetched the results: they wait in the directory, saved before the agent heard
    // they arrived.
    let saved = saved_results(&second, 4);
    check(saved, format!("saved:\n{}", second.process.log_text()))?;
    blitzen_tests::kill(second.process.pid());
    second.process.wait_exit(WAIT).map_err(fail)?;

    let third = durable_server(&dir, port, &[])?;
    let attached = DistributedDispatcher::attach(&third.addr, &session).map_err(fail)?;
    let results = attached.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u64, TaskError>> = (0..4).map(Ok).collect();
    check(results == expected, format!("{results:?}"))?;
    // Once: each task ran once, and no result reached the attached process twice.
    runs.check_each_once(0..4)?;
    let duplicates = attached.stats().duplicates;
    check(duplicates == 0, format!("the attached process dropped {duplicates} results sent twice"))
}

/// The server is killed with SIGKILL while a driver's 10,000 tasks of 1–5 ms run on two
/// agents, and started again on its directory: the agents re-attach, the driver reconnects by
/// itself, every task has exactly one result, and the caller sees no error.
fn a_driver_rides_through_a_kill_9_of_the_server() -> Result<(), Failed> {
    let dir = TempDir::new("ride");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let a = start_own_agent(&server.addr, 3, "agent-a", Duration::from_secs(5))?;
    let b = start_own_agent(&server.addr, 3, "agent-b", Duration::from_secs(5))?;
    let d = driver(&server.addr);
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..10_000).map(|i| d.run(counted, runs.args(i, 1 + i % 5))).collect();
    let early = d.get_results_with(&ids[..2_000], Fetch::default().within(WAIT)).map_err(fail)?;
    check(early.iter().all(|r| r.is_ok()), "the first results")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &[])?;
    let rest = d.get_results_with(&ids[2_000..], Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u64, TaskError>> = (2_000..10_000).map(Ok).collect();
    check(rest == expected, "every result, none lost")?;
    let log = back.process.log_text();
    check(
        log.matches("agent re-attached after the restart").count() == 2,
        format!("both agents re-attached:\n{log}"),
    )?;
    // Once: no task ran twice (those running at the kill finished where they were), and what
    // reached the driver twice was sent again for a reason: owed to it when it came back, or
    // sent again by an agent whose result the killed server had passed on unsaved.
    runs.check_each_once(0..10_000)?;
    let again = sent_again(&[log.as_str()], &[&a, &b]);
    let duplicates = d.stats().duplicates;
    check(duplicates <= again, format!("{duplicates} results came twice, {again} were sent again"))
}

/// The server is killed with SIGKILL in the middle of a graph of 2,000 tasks — 500 chains of
/// four, each task taking the one before's result — and started again on its directory: every
/// task runs exactly once, each with the value its chain carries, whether it was queued,
/// running, or still waiting for its input at the kill.
fn a_graph_rides_through_a_kill_9_of_the_server() -> Result<(), Failed> {
    const CHAINS: u64 = 500;
    let dir = TempDir::new("graph");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let a = start_own_agent(&server.addr, 3, "graph-a", Duration::from_secs(5))?;
    let b = start_own_agent(&server.addr, 3, "graph-b", Duration::from_secs(5))?;
    let d = driver(&server.addr);
    let levels: Vec<Tally> =
        (0..4).map(|_| Tally::new()).collect::<Result<_, _>>().map_err(fail)?;
    let mut chains = Vec::new();
    for i in 0..CHAINS {
        let mut id = d.run(counted, levels[0].args(i, 1 + i % 3));
        for level in &levels[1..] {
            let (file, _, millis) = level.args(0, 1 + i % 3);
            id = d.submit(counted, (file, id, millis)).map_err(fail)?;
        }
        chains.push(id);
    }
    // Some chains are done, most are not.
    check(wait_for_lines(levels[1].path(), 100), "the first chains moved on")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &[])?;
    let ends = d.get_results_with(&chains, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u64, TaskError>> = (0..CHAINS).map(Ok).collect();
    check(ends == expected, format!("each chain's value at its end: {ends:?}"))?;
    for level in &levels {
        level.check_each_once(0..CHAINS)?;
    }
    let log = back.process.log_text();
    let waited = blitzen_tests::log_sum(&log, "restored from the data directory", "waiting");
    check(waited > 0, format!("tasks waiting for their input at the kill were restored:\n{log}"))?;
    let again = sent_again(&[log.as_str()], &[&a, &b]);
    let duplicates = d.stats().duplicates;
    check(duplicates <= again, format!("{duplicates} results came twice, {again} were sent again"))
}

/// Appends `n` to `file` (as [`counted`] does), naps `millis` ms, and returns `n` with the
/// length of the shared `data`.
#[blitzen::task]
fn counted_with(
    file: String,
    n: u64,
    millis: u64,
    data: blitzen::Blob,
) -> Result<(u64, u64), String> {
    counted_inner(&file, n, millis)?;
    Ok((n, data.len() as u64))
}

fn counted_inner(file: &str, n: u64, millis: u64) -> Result<(), String> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(file).map_err(|e| format!("{file}: {e}"))?;
    f.write_all(format!("{n}\n").as_bytes()).map_err(|e| format!("{file}: {e}"))?;
    std::thread::sleep(Duration::from_millis(millis));
    Ok(())
}

/// A shared value outlives a `kill -9` of the server with the tasks that take it: 300 tasks
/// taking one 4 MiB value, the server killed midway and started again on its directory, every
/// task runs once and reads the whole value (sent again to the agent by the restarted server).
fn a_shared_value_rides_through_a_kill_9_of_the_server() -> Result<(), Failed> {
    const LEN: usize = 4 << 20;
    let dir = TempDir::new("shared");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let _agent = start_own_agent(&server.addr, 2, "shared-a", Duration::from_secs(5))?;
    let d = driver(&server.addr);
    let runs = Tally::new().map_err(fail)?;
    let shared = d.share(&blitzen::Blob::from(vec![3u8; LEN])).map_err(fail)?;
    let ids: Vec<_> = (0..300)
        .map(|i| {
            let (file, _, millis) = runs.args(i, 2);
            d.submit(counted_with, (file, i, millis, &shared))
        })
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check(wait_for_lines(runs.path(), 50), "the first tasks ran")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &[])?;
    let got = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<(u64, u64), TaskError>> =
        (0..300).map(|i| Ok((i, LEN as u64))).collect();
    check(got == expected, format!("every task read the whole value: {:?}", &got[..5]))?;
    runs.check_each_once(0..300)?;
    let status = back.status().map_err(fail)?;
    check(status["server"]["shared_values"] == 1, format!("still shared: {status}"))
}

/// Results sent again after restarts, by the `logs` of the server's runs and its `agents`: those
/// the server owed a driver when it reconnected, and those agents sent again because the server
/// had not acknowledged them — when they reconnect, or as tasks they kept when they re-attach
/// (a server killed after passing a result on to its driver, before saving it, gets it again
/// from its agent). A driver may receive each of them a second time.
fn sent_again(logs: &[&str], agents: &[&Process]) -> u64 {
    let owed: u64 = (logs.iter())
        .map(|log| {
            blitzen_tests::log_sum(log, "driver reconnected to its session", "owed")
                + blitzen_tests::log_sum(log, "agent re-attached after the restart", "kept")
        })
        .sum();
    let resent: u64 = (agents.iter())
        .map(|a| blitzen_tests::log_sum(&a.log_text(), "sending again results", "count"))
        .sum();
    owed + resent
}

/// Lines in a file (0 if it does not exist).
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Waits until `path` has `count` lines (read every 20 ms).
fn wait_for_lines(path: &std::path::Path, count: usize) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if lines_in(path) >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A task running when the server is killed with SIGKILL keeps running on its agent, which
/// re-attaches to the restarted server: it finishes exactly once (it writes a line each time it
/// starts) and its result reaches the driver.
fn a_task_running_at_a_kill_9_finishes_once() -> Result<(), Failed> {
    let dir = TempDir::new("running");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let _agent = start_agent(&server.addr, 1, "keeper").map_err(fail)?;
    let d = driver(&server.addr);
    let starts = dir.0.with_extension("starts");
    let _ = std::fs::remove_file(&starts);
    let script = format!("echo started >> '{}'; sleep 3; echo finished", starts.display());
    let id = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    check(wait_for_lines(&starts, 1), "the task started")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &[])?;
    let result = d.get_results_with(&[id], Fetch::default().within(WAIT));
    let runs = lines_in(&starts);
    let _ = std::fs::remove_file(&starts);
    let result = result.map_err(fail)?;
    let out = match &result[0] {
        Ok(out) => out,
        Err(e) => return Err(fail(format!("the task failed: {e}"))),
    };
    let (before, log) = (server.process.log_text(), back.process.log_text());
    let logs = format!("the server before the kill:\n{before}\nafter the restart:\n{log}");
    check(out.success() && out.stdout.as_slice() == b"finished\n", format!("{out:?}\n{logs}"))?;
    check(runs == 1, format!("started {runs} times, not once\n{logs}"))?;
    check(log.contains("kept=1"), format!("re-attached with the task:\n{logs}"))
}

/// When an agent does not come back after the restart, the restored tasks it may have been
/// running are queued again once `--reattach-grace` has passed, and run on another agent.
fn tasks_of_an_agent_that_does_not_return_run_again_after_the_grace() -> Result<(), Failed> {
    let dir = TempDir::new("grace");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let mut gone = start_agent(&server.addr, 1, "gone").map_err(fail)?;
    let d = driver(&server.addr);
    let starts = dir.0.with_extension("starts");
    let _ = std::fs::remove_file(&starts);
    let script = format!("echo started >> '{}'; sleep 2; echo finished", starts.display());
    let id = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    // Once it runs on `gone`, the server has it saved as held there. The agent dies with the
    // server, after it: killed first, it could be seen leaving (and saved as gone, to be
    // waited for by nobody) by a server not yet dead.
    check(wait_for_lines(&starts, 1), "the task started")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    blitzen_tests::kill(gone.pid());
    gone.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &["--reattach-grace", "1"])?;
    let _other = start_agent(&back.addr, 1, "other").map_err(fail)?;
    let r = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let _ = std::fs::remove_file(&starts);
    let host = r[0].worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
    check(host == "other", format!("ran on `{host}`"))?;
    let out = r[0].decode_as(command).map_err(fail)?;
    check(out.success() && out.stdout.as_slice() == b"finished\n", format!("{out:?}"))?;
    let log = back.process.log_text();
    check(
        log.contains("these agents did not re-attach") && log.contains("missing=gone"),
        format!("logged:\n{log}"),
    )
}

/// How a new agent connects after the restart, in the crash-loop tests below.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Newcomer {
    /// A new process of the killed agent: the same name, on the same machine.
    SameName,
    /// An agent of another name: nothing tells the server the killed one has ended.
    OtherName,
}

/// Two tasks run on an agent; it is killed with the server (`kill -9`), the server restarts
/// with a grace of 6 s, a new agent connects as `comes` says, and the server is killed and started again
/// every 2 s until both tasks' results are in. Returns how long that took from the first
/// restart, and the logs of every run after it. Each task, on its second run, finds a mark and
/// finishes at once; each writes a line as it starts and one as it ends.
fn held_through_a_crash_loop(label: &str, comes: Newcomer) -> Result<Duration, Failed> {
    const GRACE: &str = "6";
    let dir = TempDir::new(label);
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    // Named for this test alone: a new process of this name takes over the old one's lock.
    let held = format!("held-{label}");
    let mut agent = start_agent(&server.addr, 2, &held).map_err(fail)?;
    let d = driver(&server.addr);
    let (starts, ends, mark) = (
        dir.0.with_extension("starts"),
        dir.0.with_extension("ends"),
        dir.0.with_extension("mark"),
    );
    for file in [&starts, &ends, &mark] {
        let _ = std::fs::remove_file(file);
    }
    let script = |n: u32| {
        format!(
            "echo {n} >> '{}'; [ -e '{}' ] || sleep 60; echo {n} >> '{}'; echo {n}",
            starts.display(),
            mark.display(),
            ends.display()
        )
    };
    let ids: Vec<_> =
        (0..2).map(|n| d.run(command, CommandSpec::new("sh").arg("-c").arg(script(n)))).collect();
    check(wait_for_lines(&starts, 2), "both tasks started")?;
    // The server first, then the agent: killed first, the agent could be seen leaving.
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    blitzen_tests::kill(agent.pid());
    agent.wait_exit(WAIT).map_err(fail)?;
    std::fs::write(&mark, b"").map_err(fail)?;

    let first_restart = std::time::Instant::now();
    let mut runs = vec![durable_server(&dir, port, &["--reattach-grace", GRACE])?];
    let name = if comes == Newcomer::SameName { held.clone() } else { format!("other-{label}") };
    let newcomer = start_agent(&runs[0].addr, 2, &name).map_err(fail)?;
    if comes == Newcomer::OtherName {
        // The status says what is held, for whom, and for how long at most.
        let said: serde_json::Value =
            serde_json::from_str(&status(&runs[0].addr, &["--json"])?).map_err(fail)?;
        let restart = &said["restart"];
        check(
            restart["held"] == 2 && restart["awaiting"] == serde_json::json!([held]),
            format!("status --json: {said}"),
        )?;
        let left = restart["release_in_ms"].as_u64().unwrap_or(u64::MAX);
        check(left <= 6_000, format!("released in {left} ms at the latest: {said}"))?;
        let text = status(&runs[0].addr, &[])?;
        let line = text.lines().find(|l| l.contains("restored tasks held")).unwrap_or_default();
        check(
            line.contains("2 restored tasks") && line.contains(&held),
            format!("status:\n{text}"),
        )?;
    }
    let results = loop {
        match d.get_results_with(&ids, Fetch::keep().within(Duration::from_secs(2))) {
            Ok(results) => break results,
            Err(DispatchError::WaitTimedOut { .. }) if first_restart.elapsed() < WAIT => {
                let last = runs.last_mut().ok_or("no server")?;
                blitzen_tests::kill(last.process.pid());
                last.process.wait_exit(WAIT).map_err(fail)?;
                runs.push(durable_server(&dir, port, &["--reattach-grace", GRACE])?);
            }
            Err(e) => return Err(fail(e)),
        }
    };
    let took = first_restart.elapsed();
    let logs: Vec<String> = runs.iter().map(|r| r.process.log_text()).collect();
    let all = logs.join("\n----- the next run -----\n");
    for (n, r) in results.iter().enumerate() {
        let out = r.as_ref().map_err(|e| fail(format!("task {n}: {e}\n{all}")))?;
        check(out.stdout == format!("{n}\n").as_bytes(), format!("task {n}: {out:?}"))?;
    }
    // Each finished once (the first runs died with their agent), and reached the driver once.
    let ended = std::fs::read_to_string(&ends).unwrap_or_default();
    let mut ended: Vec<&str> = ended.lines().collect();
    ended.sort_unstable();
    check(ended == ["0", "1"], format!("the tasks ended {ended:?}\n{all}"))?;
    let logs: Vec<&str> = logs.iter().map(String::as_str).collect();
    let again = sent_again(&logs, &[&agent, &newcomer]);
    let duplicates = d.stats().duplicates;
    check(
        duplicates <= again,
        format!("{duplicates} results came twice, {again} were sent again"),
    )?;
    check(
        logs[0].contains("holding the restored tasks")
            && logs[0].contains(&format!("agents={held}")),
        format!("the first restart held the tasks for the killed agent:\n{}", logs[0]),
    )?;
    println!(
        "{label}: the held tasks ran {took:?} after the first restart, {} restarts",
        runs.len()
    );
    if comes == Newcomer::SameName {
        let replaced = logs.iter().any(|l| l.contains("a new process of an agent the restarted"));
        check(replaced, format!("the new process ended the wait:\n{all}"))?;
    }
    Ok(took)
}

/// What `blitzen-server status` says of the server at `addr`, with `args`.
fn status(addr: &str, args: &[&str]) -> Result<String, Failed> {
    let out = std::process::Command::new(binary("blitzen-server").map_err(fail)?)
        .args(["status", "--server", addr])
        .args(args)
        .env_remove("BLITZEN_SECRET")
        .output()
        .map_err(fail)?;
    check(out.status.success(), format!("status: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The killed agent's new process (the same name) proves the old one ended: the tasks it held
/// run at once, though the server keeps restarting.
fn a_new_process_of_a_killed_agent_ends_the_wait_for_it() -> Result<(), Failed> {
    let took = held_through_a_crash_loop("same-name", Newcomer::SameName)?;
    check(took < Duration::from_secs(6), format!("ran {took:?} after the first restart"))
}

/// A killed agent that never comes back is waited for one grace of the server's uptime, not a
/// fresh grace at each restart: a server restarting every 2 s with a 6 s grace runs the tasks
/// the agent held within that grace plus one restart.
fn a_crash_looping_server_waits_one_grace_for_an_agent_that_never_returns() -> Result<(), Failed> {
    let took = held_through_a_crash_loop("crash-loop", Newcomer::OtherName)?;
    check(took >= Duration::from_secs(5), format!("released after {took:?}, before the grace"))?;
    check(took < Duration::from_secs(6 + 2 + 3), format!("ran {took:?} after the first restart"))
}

/// A task the restarted server no longer holds for its agent (with `--reattach-grace 0` it is
/// queued again at once) is stopped on that agent when it re-attaches, with what it started:
/// it does not run on for nobody beside its new run.
fn a_task_the_restarted_server_dropped_stops_on_its_agent() -> Result<(), Failed> {
    let dir = TempDir::new("dropped");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let _agent = start_agent(&server.addr, 1, "dropper").map_err(fail)?;
    let d = driver(&server.addr);
    let pids = dir.0.with_extension("pids");
    let _ = std::fs::remove_file(&pids);
    let script = format!("sleep 600 & echo $! >> '{}'; wait", pids.display());
    let id = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    check(wait_for_lines(&pids, 1), "the task started")?;
    let first: u32 = std::fs::read_to_string(&pids)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .ok_or("no pid")?;
    blitzen_tests::kill(server.process.pid());
    server.process.wait_exit(WAIT).map_err(fail)?;
    let back = durable_server(&dir, port, &["--reattach-grace", "0"])?;
    // Queued again at once, it starts a second time once the agent is back.
    let started_again = wait_for_lines(&pids, 2);
    let deadline = std::time::Instant::now() + WAIT;
    while blitzen_tests::is_alive(first) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_alive = blitzen_tests::is_alive(first);
    d.cancel(&id).map_err(fail)?;
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let _ = std::fs::remove_file(&pids);
    check(started_again, "the task did not run again")?;
    check(!first_alive, format!("the first run's child {first} still runs"))?;
    check(matches!(r[0], Err(TaskError::Cancelled { .. })), format!("{r:?}"))?;
    let log = back.process.log_text();
    check(log.contains("what it holds is dropped"), format!("logged:\n{log}"))
}

/// A server with a data directory that stops cleanly (SIGTERM) does not tell its drivers to give
/// up: started again, it finishes their tasks, and the driver never saw an error.
fn a_driver_waits_through_a_clean_restart() -> Result<(), Failed> {
    let dir = TempDir::new("clean");
    let port = free_port().map_err(fail)?;
    let mut server = durable_server(&dir, port, &[])?;
    let _agent = start_agent(&server.addr, 1, "worker").map_err(fail)?;
    let d = driver(&server.addr);
    let id = d.run(blitzen::sleep, 1.0);
    d.wait_accepted(WAIT).map_err(fail)?;
    let status = server.process.stop().map_err(fail)?;
    check(status.success(), format!("stopped cleanly: {status:?}"))?;
    let _back = durable_server(&dir, port, &[])?;
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(1.0)], format!("{r:?}"))
}

/// A `LocalCluster` with a data directory: tasks accepted before it stopped (their worker
/// stopped with it) run when it starts again on the same directory, and their results reach a
/// driver that attaches to their session; a directory held by a running cluster is refused.
fn a_local_cluster_keeps_its_state_in_a_data_directory() -> Result<(), Failed> {
    use blitzen::distributed::LocalCluster;
    let dir = TempDir::new("local");
    let session = format!("local-{}", std::process::id());
    let cluster = LocalCluster::start_with_data_dir(3, &dir.0).map_err(fail)?;
    let taken = LocalCluster::start_with_data_dir(1, &dir.0).map(|_| ()).map_err(|e| e.to_string());
    check(
        matches!(&taken, Err(e) if e.contains("in use by another running server")),
        format!("{taken:?}"),
    )?;
    let d = cluster.dispatcher().with_session(&session);
    // Tasks that last a second: gone before any result reaches this process, which leaves them
    // to the session.
    let seconds = [1.0, 1.1, 1.2];
    let ids: Vec<_> = seconds.iter().map(|&s| d.run(sleep, s)).collect();
    d.wait_accepted(WAIT).map_err(fail)?;
    d.detach();
    cluster.shutdown();
    let again = LocalCluster::start_with_data_dir(3, &dir.0).map_err(fail)?;
    let attached = DistributedDispatcher::attach(again.addr(), &session).map_err(fail)?;
    let results = attached.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results == seconds.map(Ok), format!("{results:?}"))
}

/// A tmpfs of `size` mounted for one test, unmounted when dropped.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(label: &str, size: &str) -> Option<Self> {
        let dir = TempDir::new(label);
        std::fs::create_dir_all(&dir.0).ok()?;
        let options = format!("size={size}");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs", dir.arg()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }

    fn resize(&self, size: &str) -> bool {
        let options = format!("remount,size={size}");
        std::process::Command::new("mount")
            .args(["-o", &options, self.0.arg()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.arg()).status();
    }
}

/// Whether this test run may mount file systems (it runs as root).
fn mount_permitted() -> bool {
    Tmpfs::mount("probe", "64k").is_some()
}

/// A data directory whose disk fills up while serving: new submissions are refused with a clear
/// `TaskError::Refused`, what was accepted is not lost, the server keeps running, and once there
/// is space again it takes tasks again.
fn a_full_disk_refuses_new_tasks_and_loses_nothing() -> Result<(), Failed> {
    let disk = Tmpfs::mount("full", "3m").ok_or_else(|| fail("cannot mount a tmpfs"))?;
    let server = durable_server(&disk.0, 0, &[])?;
    let d = driver(&server.addr).with_session("full-disk");
    // No agent yet: the tasks stay queued, 256 KiB of arguments each, until the disk is full.
    let payload = blitzen::Blob::from(vec![7u8; 256 * 1024]);
    let mut refused = None;
    let mut accepted = Vec::new();
    for _ in 0..64 {
        // Queued (it waits: no agent), or refused at once. The one whose save hit the full
        // disk is neither, until space returns: it is held, not lost.
        let id = d.run(echo::<blitzen::Blob>(), payload.clone());
        match d.get_results_with(&[id], Fetch::keep().within(Duration::from_millis(300))) {
            Err(blitzen::DispatchError::WaitTimedOut { .. }) => accepted.push(id),
            Ok(mut r) => match r.remove(0) {
                Err(e @ TaskError::Refused { .. }) => {
                    refused = Some(e.to_string());
                    break;
                }
                other => return Err(format!("unexpected: {other:?}").into()),
            },
            Err(e) => return Err(format!("unexpected: {e}").into()),
        }
    }
    let reason = refused.ok_or_else(|| fail("the disk never filled"))?;
    check(reason.contains("cannot save to its data directory"), reason.clone())?;
    check(!accepted.is_empty(), "some tasks were taken before the disk filled")?;
    // Space returns: at the writer's next attempt (every second) saving resumes, the tasks
    // accepted before run, and new ones are taken again.
    check(disk.resize("64m"), "remount with more space")?;
    let back = server.process.wait_for_log("takes writes again", 1, WAIT);
    check(back, format!("saving resumed:\n{}", server.process.log_text()))?;
    let _agent = start_agent(&server.addr, 1, "worker").map_err(fail)?;
    let done = d.get_results_with(&accepted, Fetch::default().within(WAIT)).map_err(fail)?;
    check(done.iter().all(|r| r.as_ref().is_ok_and(|b| b.len() == 256 * 1024)), "nothing lost")?;
    let id = d.run(echo::<u32>(), 5);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(5)], format!("{r:?}"))
}

/// Waits until the server's debug log says `count` results were saved (read every 50 ms).
fn saved_results(server: &ServerProcess, count: usize) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let saved: usize = (server.process.log_text().lines())
            .filter(|l| l.contains("results saved"))
            .filter_map(|l| {
                l.split("results=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok()
            })
            .sum::<usize>();
        if saved >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A data directory the server cannot use stops it at start with a clear message, and nothing
/// in it is overwritten.
fn an_unusable_data_directory_is_a_clear_error() -> Result<(), Failed> {
    let dir = TempDir::new("bad");
    std::fs::create_dir_all(&dir.0).map_err(fail)?;
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"x").map_err(fail)?;
    let garbage = dir.0.join("garbage");
    std::fs::create_dir_all(&garbage).map_err(fail)?;
    std::fs::write(garbage.join("blitzen.redb"), b"not a database").map_err(fail)?;
    let busy = TempDir::new("busy");
    let _running = durable_server(&busy, 0, &[])?;
    let cases = [
        (file.to_str().unwrap_or_default().to_string(), "as the data directory"),
        (garbage.to_str().unwrap_or_default().to_string(), "cannot open the database"),
        (busy.arg().to_string(), "in use by another running server"),
    ];
    for (path, expected) in cases {
        let mut cmd = std::process::Command::new(binary("blitzen-server").map_err(fail)?);
        cmd.args(["--port", "0", "--data-dir", &path]);
        let mut process = start_program(cmd, "bad-dir").map_err(fail)?;
        let status = process.wait_exit(WAIT / 3).map_err(fail)?;
        let log = process.log_text();
        check(status.is_some_and(|s| !s.success()), format!("{path}: not refused: {log}"))?;
        check(log.contains(expected), format!("{path}: `{expected}` missing:\n{log}"))?;
    }
    let kept = std::fs::read(garbage.join("blitzen.redb")).map_err(fail)?;
    check(kept == b"not a database", "the foreign file is left as it was")
}

fn main() -> std::process::ExitCode {
    // The local cluster's workers are this program.
    blitzen::worker_main();
    blitzen_tests::tally::own_agent_main();
    let args = Arguments::from_args();
    let mount = mount_permitted();
    if !mount {
        eprintln!(
            "a_full_disk_refuses_new_tasks_and_loses_nothing is skipped: mounting a tmpfs needs \
             root (run the suite as root to include it)"
        );
    }
    let trials = vec![
        trial!(queued_tasks_and_unfetched_results_survive_kill_9),
        trial!(an_unusable_data_directory_is_a_clear_error),
        trial!(a_driver_rides_through_a_kill_9_of_the_server),
        trial!(a_graph_rides_through_a_kill_9_of_the_server),
        trial!(a_shared_value_rides_through_a_kill_9_of_the_server),
        trial!(a_driver_waits_through_a_clean_restart),
        trial!(a_task_running_at_a_kill_9_finishes_once),
        trial!(a_local_cluster_keeps_its_state_in_a_data_directory),
        trial!(tasks_of_an_agent_that_does_not_return_run_again_after_the_grace),
        trial!(a_task_the_restarted_server_dropped_stops_on_its_agent),
        trial!(a_new_process_of_a_killed_agent_ends_the_wait_for_it),
        trial!(a_crash_looping_server_waits_one_grace_for_an_agent_that_never_returns),
        trial!(a_full_disk_refuses_new_tasks_and_loses_nothing).with_ignored_flag(!mount),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
