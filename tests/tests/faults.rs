//! End-to-end tests of faults and hostile input against the real `blitzen-server` and
//! `blitzen-client` binaries on 127.0.0.1: agents killed or frozen mid-work, and a stranger
//! sending garbage, oversized frames, wrong messages and idle connections while a driver keeps
//! working.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use blitzen::distributed::DistributedDispatcher;
use blitzen::{CommandSpec, Fetch, Task, TaskError, TaskId, command, echo, sleep};
use blitzen_protocol::Report;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, FromAgent, Hello, HelloReply, Preface, PrefaceReply, Role, TaskKind,
    ToAgent,
};
use blitzen_protocol::frame::{FrameReader, decode_shared, encode};
use blitzen_protocol::{MAX_FRAME_LEN, Outcome, TaskKey};
use blitzen_tests::cluster::{
    TempFile, binary, driver, start_agent, start_agent_with, start_program, start_server,
};
use blitzen_tests::proxy::Proxy;
use blitzen_tests::tally::{Tally, counted, start_own_agent};
use blitzen_tests::trial;
use blitzen_tests::{check, fail, poke, rss_bytes, signal};
use bytes::{Bytes, BytesMut};
use libtest_mimic::{Arguments, Failed};
use rustix::process::Signal;

const WAIT: Duration = Duration::from_secs(60);

/// The hosts that ran `ids`, after checking that every one succeeded.
fn hosts_of(d: &DistributedDispatcher, ids: &[TaskId<f64>]) -> Result<Vec<String>, Failed> {
    let results = d.get_task_results(ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results.len() == ids.len(), format!("{} results", results.len()))?;
    let mut hosts = Vec::new();
    for r in &results {
        r.decode::<f64>().map_err(fail)?;
        hosts.push(r.worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default());
    }
    Ok(hosts)
}

fn killing_an_agent_midway_loses_no_task() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let doomed = start_agent(&server.addr, 2, "doomed").map_err(fail)?;
    let _survivor = start_agent(&server.addr, 2, "survivor").map_err(fail)?;
    let d = driver(&server.addr);
    let ids: Vec<_> = (0..2_000).map(|_| d.run(sleep, 0.004)).collect();
    // Midway: the first tasks are done, most are still queued or running.
    let early = hosts_of(&d, &ids[..300])?;
    check(early.iter().any(|h| h == "doomed"), "the doomed agent took part before its end")?;
    blitzen_tests::kill(doomed.pid());
    let rest = hosts_of(&d, &ids[300..])?;
    check(rest.len() == 1_700, "all 2,000 results")?;
    check(rest.iter().rev().take(100).all(|h| h == "survivor"), "the survivor finished the work")
}

fn a_frozen_agent_is_detected_and_its_late_results_are_dropped() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let frozen =
        start_agent_with(&server.addr, 1, "frozen", &["--heartbeat", "0.2"]).map_err(fail)?;
    let d = driver(&server.addr);
    // The task tells the test through a FIFO when it has started (only the first time: the
    // test removes the FIFO once told), then works for a second.
    let fifo = std::env::temp_dir().join(format!("blitzen-test-{}-started", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().map_err(fail)?;
    check(made.success(), "mkfifo")?;
    let script = format!("[ -p '{0}' ] && echo started > '{0}'; sleep 1", fifo.display());
    let spec = CommandSpec::new("sh").arg("-c").arg(script);
    let id = d.run(command, spec);
    let mut started = String::new();
    let opened = std::fs::File::open(&fifo).and_then(|mut f| f.read_to_string(&mut started));
    let _ = std::fs::remove_file(&fifo);
    opened.map_err(fail)?;
    // Frozen mid-task: its worker finishes, but the agent neither reports nor heartbeats.
    signal(frozen.pid(), Signal::STOP);
    let mut healthy = start_agent(&server.addr, 1, "healthy").map_err(fail)?;
    let result = d.get_task_results(&[id], Fetch::default().within(WAIT));
    signal(frozen.pid(), Signal::CONT);
    let result = result.map_err(fail)?;
    let host = result[0].worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
    check(host == "healthy", format!("rerun elsewhere, not on `{host}`"))?;
    let out = result[0].decode_as(command).map_err(fail)?;
    check(out.code == Some(0), format!("{out:?}"))?;
    let log = server.process.log_text();
    check(log.contains("missed its heartbeats"), format!("detected:\n{log}"))?;
    // Thawed, the frozen agent reconnects and first delivers what its worker finished
    // meanwhile; the server already has that result and drops it. With the healthy agent gone,
    // a new task's result proves the thawed agent is back, after its late delivery.
    healthy.stop().map_err(fail)?;
    let probe = d.run(echo::<u8>(), 7);
    let back = d.get_task_results(&[probe], Fetch::default().within(WAIT)).map_err(fail)?;
    let host = back[0].worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
    check(host == "frozen", format!("the thawed agent serves again, not `{host}`"))?;
    let log = server.process.log_text();
    let dropped = log.lines().find(|l| l.contains("ran twice")).unwrap_or_default();
    check(dropped.contains("recovered=true"), format!("late result dropped:\n{log}"))?;
    // Nothing reached the driver twice: the server sent it no second result to drop.
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the driver dropped {duplicates} results sent twice"))
}

/// A live agent on a slow link (1 MB/s through a throttling proxy) sends an 8 MB result, which
/// takes several times its silence limit to cross: bytes arriving are proof of life, so it is
/// not counted lost and the result arrives once.
fn a_live_agent_on_a_slow_link_delivers_a_large_result_once() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    proxy.throttle(1_000_000);
    let agent =
        start_agent_with(&proxy.addr, 1, "slow-link", &["--heartbeat", "0.5"]).map_err(fail)?;
    let d = driver(&server.addr);
    let runs = TempFile::new("runs", b"").map_err(fail)?;
    let script = format!("echo run >> '{}'; head -c 8000000 /dev/zero", runs.arg());
    let spec = CommandSpec::new("sh").arg("-c").arg(script);
    let started = std::time::Instant::now();
    let id = d.run(command, spec);
    let result = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let out = result[0].decode_as(command).map_err(fail)?;
    check(out.stdout.len() == 8_000_000, format!("{} bytes", out.stdout.len()))?;
    check(started.elapsed() > Duration::from_secs(4), "the link was slow")?;
    let log = server.process.log_text();
    check(!log.contains("counted lost") && !log.contains("agent disconnected"), log.clone())?;
    check(
        !log.contains("ran twice"),
        format!(
            "ran once:
{log}"
        ),
    )?;
    check(!agent.log_text().contains("connection lost"), agent.log_text())?;
    let ran = std::fs::read_to_string(&runs.path).map_err(fail)?.lines().count();
    check(ran == 1, format!("the task ran {ran} times"))?;
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the driver dropped {duplicates} results sent twice"))
}

/// A server stopped for 3 s (SIGSTOP: a paused VM, heavy swapping) finds its idle agent's
/// heartbeats waiting when it wakes, and counts nobody lost.
fn an_idle_agent_survives_a_stalled_server() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let agent = start_agent_with(&server.addr, 1, "idle", &["--heartbeat", "0.5"]).map_err(fail)?;
    let d = driver(&server.addr);
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    signal(server.process.pid(), Signal::STOP);
    // The fault itself: the server does not run for 3 s, six heartbeat intervals.
    std::thread::sleep(Duration::from_secs(3));
    signal(server.process.pid(), Signal::CONT);
    let after = d.run(echo::<u8>(), 2);
    let r = d.get_results_with(&[after], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(2)], format!("{r:?}"))?;
    let log = server.process.log_text();
    check(!log.contains("counted lost") && !log.contains("agent disconnected"), log.clone())?;
    let agent_log = agent.log_text();
    check(!agent_log.contains("connection lost"), format!("the agent stayed:\n{agent_log}"))
}

/// A driver's link that goes silent with both sockets open (the proxy stops forwarding) is
/// noticed on both ends within three heartbeat intervals: the server counts the driver
/// disconnected, and the driver, unable to get back within its reconnect window, ends its
/// unfinished task `Lost` saying why.
fn a_frozen_driver_link_is_detected_on_both_ends() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "worker").map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let d = driver(&proxy.addr)
        .with_heartbeat(Duration::from_millis(500))
        .with_reconnect_window(Duration::from_secs(2));
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    let long = d.run(sleep, 30.0);
    d.wait_accepted(WAIT).map_err(fail)?;
    proxy.freeze();
    let frozen_at = std::time::Instant::now();
    let r = d.get_results_with(&[long], Fetch::default().within(WAIT)).map_err(fail)?;
    let waited = frozen_at.elapsed();
    match &r[0] {
        Err(e @ TaskError::Lost { reason, .. }) => {
            check(reason.contains("nothing arrived from the server"), format!("{e}"))?
        }
        other => return Err(format!("expected Lost, got {other:?}").into()),
    }
    check(waited < Duration::from_secs(10), format!("noticed after {waited:?}"))?;
    let noticed = server.process.wait_for_log("nothing arrived from the driver", 1, WAIT / 6);
    check(noticed, format!("the server noticed:\n{}", server.process.log_text()))
}

/// An agent whose link goes silent both ways is counted lost by the server first; the agent
/// notices the silence itself (three intervals plus 10 s), reconnects once the link works, and
/// serves again.
fn an_agent_on_a_silent_link_notices_and_reconnects() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let agent =
        start_agent_with(&proxy.addr, 1, "silent", &["--heartbeat", "0.2"]).map_err(fail)?;
    let d = driver(&server.addr);
    let warm = d.run(echo::<u8>(), 1);
    d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    proxy.freeze();
    let lost = server.process.wait_for_log("counted lost", 1, WAIT / 6);
    check(lost, format!("the server noticed first:\n{}", server.process.log_text()))?;
    check(!agent.log_text().contains("nothing arrived"), "the agent waits longer")?;
    let noticed = agent.wait_for_log("nothing arrived from the server", 1, WAIT / 3);
    check(noticed, format!("the agent noticed:\n{}", agent.log_text()))?;
    // The link works again; the reconnected agent serves.
    proxy.cut();
    proxy.thaw();
    let probe = d.run(echo::<u8>(), 2);
    let r = d.get_results_with(&[probe], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(2)], format!("{r:?}"))
}

/// A result lost with its connection (sent into a frozen link that is then cut) is sent again
/// by the agent when it reconnects: the task, which writes a line each time it starts, ran once.
fn a_result_lost_in_transit_is_sent_again_not_rerun() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let agent = start_agent_with(&proxy.addr, 1, "lossy", &["--heartbeat", "0.2"]).map_err(fail)?;
    let d = driver(&server.addr);
    let runs = TempFile::new("runs", b"").map_err(fail)?;
    let fifo = std::env::temp_dir().join(format!("blitzen-test-{}-lossy", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().map_err(fail)?;
    check(made.success(), "mkfifo")?;
    let script = format!(
        "echo run >> '{}'; [ -p '{1}' ] && echo started > '{1}'; sleep 0.3",
        runs.arg(),
        fifo.display()
    );
    let id = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    let mut started = String::new();
    let opened = std::fs::File::open(&fifo).and_then(|mut f| f.read_to_string(&mut started));
    let _ = std::fs::remove_file(&fifo);
    opened.map_err(fail)?;
    // The result leaves the agent 0.3 s from now, into a link that forwards nothing.
    proxy.freeze();
    let lost = server.process.wait_for_log("counted lost", 1, WAIT / 6);
    check(lost, format!("the agent counted lost:\n{}", server.process.log_text()))?;
    proxy.cut();
    proxy.thaw();
    let r = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let out = r[0].decode_as(command).map_err(fail)?;
    check(out.code == Some(0), format!("{out:?}"))?;
    // The fault happened as meant: the result was in the frozen link, and was sent again.
    let log = agent.log_text();
    let resent = log.lines().find(|l| l.contains("sending again results the server had not"));
    check(resent.is_some_and(|l| l.contains("count=1")), format!("sent again:\n{log}"))?;
    let lines = std::fs::read_to_string(&runs.path).map_err(fail)?;
    check(lines.lines().count() == 1, format!("the task ran {} times", lines.lines().count()))
}

/// A driver whose connection is cut mid-run reconnects by itself, takes its session over and
/// receives every result exactly once; the caller sees no error.
fn a_cut_driver_link_reconnects_and_loses_nothing() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _a = start_agent(&server.addr, 2, "agent-a").map_err(fail)?;
    let _b = start_agent(&server.addr, 2, "agent-b").map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let d = driver(&proxy.addr);
    let ids: Vec<_> = (0..3_000u32).map(|i| d.run(echo::<u32>(), i)).collect();
    let early = d.get_results_with(&ids[..300], Fetch::default().within(WAIT)).map_err(fail)?;
    check(early.iter().all(|r| r.is_ok()), "the first results")?;
    // While the link holds, nothing comes twice.
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("{duplicates} results came twice before the cut"))?;
    proxy.cut();
    // More work while the link is down, sent once it is back.
    let late: Vec<_> = (0..500u32).map(|i| d.run(echo::<u32>(), 10_000 + i)).collect();
    let rest = d.get_results_with(&ids[300..], Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u32, TaskError>> = (300..3_000).map(Ok).collect();
    check(rest == expected, "every result, in order, none lost")?;
    let late = d.get_results_with(&late, Fetch::default().within(WAIT)).map_err(fail)?;
    check(late.iter().enumerate().all(|(i, r)| r == &Ok(10_000 + i as u32)), "late tasks")?;
    let log = server.process.log_text();
    check(log.contains("driver reconnected to its session"), format!("resumed:\n{log}"))?;
    // The server sends again, once, what it was owed when the driver came back: results whose
    // acknowledgement the cut lost (most of them: the results stream in faster than the cut
    // comes). The driver drops those it had, and no others come.
    let owed = blitzen_tests::log_sum(&log, "driver reconnected to its session", "owed");
    let duplicates = d.stats().duplicates;
    check(duplicates <= owed, format!("{duplicates} results came twice, {owed} were owed"))
}

/// An agent whose connection is cut mid-run reconnects by itself and delivers what it ran
/// meanwhile; every task has exactly one result.
fn a_cut_agent_link_reconnects_and_loses_nothing() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let proxy = Proxy::start(&server.addr).map_err(fail)?;
    let agent = start_own_agent(&proxy.addr, 2, "cut-off", Duration::from_secs(5))?;
    let d = driver(&server.addr);
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..600).map(|i| d.run(counted, runs.args(i, 4))).collect();
    let early = d.get_task_results(&ids[..100], Fetch::default().within(WAIT)).map_err(fail)?;
    check(early.iter().all(|r| r.is_ok()), "the first results")?;
    proxy.cut();
    let rest = d.get_task_results(&ids[100..], Fetch::default().within(WAIT)).map_err(fail)?;
    for (i, r) in rest.iter().enumerate() {
        check(r.decode::<u64>() == Ok(100 + i as u64), format!("task {}: {r:?}", 100 + i))?;
        let host = r.worker.as_ref().and_then(|w| w.host.as_deref()).unwrap_or_default();
        check(host == "cut-off", format!("task {} ran on `{host}`", 100 + i))?;
    }
    check(agent.log_text().contains("reconnecting"), agent.log_text())?;
    runs.check_each_once(0..600)?;
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the driver dropped {duplicates} results sent twice"))
}

/// A network namespace joined to this one by a veth pair, made for one test and removed when
/// dropped: `host` is this side's address, `remote` the namespace's.
struct Netns {
    name: String,
    link: String,
    host: String,
    remote: String,
}

fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = std::process::Command::new("ip").args(args).output().map_err(fail)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.success(), format!("ip {}: {stderr}", args.join(" ")))
}

impl Netns {
    fn create(tag: &str) -> Result<Self, Failed> {
        let id = std::process::id() % 10_000;
        let ns = Netns {
            name: format!("blz-{tag}-{id}"),
            link: format!("blz{tag}{id}"),
            host: format!("10.231.{}.1", id % 250),
            remote: format!("10.231.{}.2", id % 250),
        };
        let peer = format!("{}p", ns.link);
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.link, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &ns.link])?;
        ip(&["link", "set", &ns.link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.remote), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts (or restores) the link: packets are dropped, connections are not closed.
    fn set_link(&self, up: bool) -> Result<(), Failed> {
        ip(&["link", "set", &self.link, if up { "up" } else { "down" }])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the pair, and with it ours.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.link]);
    }
}

/// Whether this process may create network namespaces (root, and a kernel that allows it).
fn netns_permitted() -> bool {
    let probe = format!("blz-probe-{}", std::process::id());
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let _ = ip(&["netns", "del", &probe]);
    }
    made
}

fn a_partitioned_agent_is_replaced_and_rejoins_when_healed() -> Result<(), Failed> {
    let net = Netns::create("p")?;
    let secret = TempFile::new("secret", b"a partition test's shared secret").map_err(fail)?;
    // Reachable from the namespace: a non-loopback address, so it needs the secret.
    let server =
        start_server(&["--bind", &net.host, "--secret-file", secret.arg()]).map_err(fail)?;
    let mut remote_cmd = std::process::Command::new("ip");
    remote_cmd
        .args(["netns", "exec", &net.name])
        .arg(binary("blitzen-client").map_err(fail)?)
        .args(["--server", &server.addr, "--workers", "1", "--name", "remote"])
        .args(["--heartbeat", "0.2", "--secret-file", secret.arg()]);
    let remote = start_program(remote_cmd, "remote").map_err(fail)?;
    let d = driver(&server.addr).with_secret_file(&secret.path).map_err(fail)?;
    let fifo = std::env::temp_dir().join(format!("blitzen-test-{}-cut", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    check(
        std::process::Command::new("mkfifo").arg(&fifo).status().map_err(fail)?.success(),
        "mkfifo",
    )?;
    let script = format!("[ -p '{0}' ] && echo started > '{0}'; sleep 1", fifo.display());
    let id = d.run(command, CommandSpec::new("sh").arg("-c").arg(script));
    let mut started = String::new();
    let opened = std::fs::File::open(&fifo).and_then(|mut f| f.read_to_string(&mut started));
    let _ = std::fs::remove_file(&fifo);
    opened.map_err(fail)?;
    // The partition: the remote agent's task runs on, but nothing gets through.
    net.set_link(false)?;
    let mut local = start_agent_with(&server.addr, 1, "local", &["--secret-file", secret.arg()])
        .map_err(fail)?;
    let result = d.get_task_results(&[id], Fetch::default().within(WAIT));
    net.set_link(true)?;
    let result = result.map_err(fail)?;
    let host = result[0].worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
    check(host == "local", format!("rerun on this side, not on `{host}`"))?;
    let log = server.process.log_text();
    check(log.contains("missed its heartbeats"), format!("partition detected:\n{log}"))?;
    // Healed: the remote agent notices its connection is gone, reconnects and serves again.
    // (Its result, written into the dead connection during the partition, is lost with it;
    // had it arrived, the server would have dropped it as a duplicate.)
    local.stop().map_err(fail)?;
    let probe = d.run(echo::<u8>(), 3);
    let back = d.get_task_results(&[probe], Fetch::default().within(WAIT)).map_err(fail)?;
    let host = back[0].worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
    check(host == "remote", format!("the remote agent serves again, not `{host}`"))?;
    drop(remote);
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the driver dropped {duplicates} results sent twice"))
}

/// The cluster's description of a task, as an agent announces it.
fn kind_of<T: Task>(_: T) -> TaskKind {
    TaskKind {
        name: T::NAME.into(),
        fingerprint: T::FINGERPRINT,
        signature: T::SIGNATURE.into(),
        request: None,
        label: None,
        stream: false,
        priority: 0,
    }
}

fn an_agent_that_never_answers_has_its_timed_task_settled() -> Result<(), Failed> {
    let server = start_server(&["--deadline-grace", "0.5"]).map_err(fail)?;
    // A hand-made agent: it takes the task, says it started, and then says nothing at all
    // (it announces no heartbeat, so it is never counted lost).
    let mut mute = TcpStream::connect(&server.addr).map_err(fail)?;
    let hello = Hello {
        version: CLUSTER_PROTOCOL_VERSION,
        role: Role::Agent {
            host: "mute".into(),
            workers: 1,
            tasks: vec![kind_of(sleep)],
            heartbeat_ms: 0,
            agent_id: 0,
            replaces: 0,
            capacity: None,
            cache_size: 0,
            ends_in_ms: 0,
            allocation: String::new(),
        },
        nonce: Bytes::new(),
    };
    mute.write_all(&plain(&frame(&hello))).map_err(fail)?;
    let mut frames = FrameReader::new(mute.try_clone().map_err(fail)?, MAX_FRAME_LEN);
    let mut next = || -> Result<Bytes, Failed> {
        Ok(frames.read_frame().map_err(fail)?.ok_or("the server closed")?.freeze())
    };
    let reply: PrefaceReply = decode_shared(&next()?).map_err(fail)?;
    check(reply == PrefaceReply::Plain, format!("{reply:?}"))?;
    let welcome: HelloReply = decode_shared(&next()?).map_err(fail)?;
    check(matches!(welcome, HelloReply::Welcome(_)), format!("{welcome:?}"))?;
    let d = driver(&server.addr);
    let started = std::time::Instant::now();
    let id = d.run_with_timeout(sleep, 30.0, Duration::from_millis(300));
    let ToAgent::Run(tasks) = decode_shared(&next()?).map_err(fail)? else {
        return Err("expected tasks".into());
    };
    let keys: Vec<TaskKey> = tasks.iter().map(|t| t.key).collect();
    mute.write_all(&frame(&FromAgent::Started(keys))).map_err(fail)?;
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let waited = started.elapsed();
    match &r[0] {
        Err(TaskError::Lost { reason, .. }) => {
            check(reason.contains("settled by the server"), reason)?;
        }
        other => return Err(format!("expected the server to settle it, got {other:?}").into()),
    }
    check(
        waited >= Duration::from_millis(800),
        format!("settled after {waited:?}, before the deadline"),
    )
}

fn a_live_agent_answers_before_the_servers_deadline() -> Result<(), Failed> {
    let server =
        start_server(&["--deadline-grace", "0.5", "--log-level", "debug"]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "prompt").map_err(fail)?;
    let d = driver(&server.addr);
    // One worker: `within` is assigned at once but waits a second behind `long`. Counted from
    // the assignment, its deadline (1 s + 0.5 s) would pass before it ends (at 1.7 s); counted
    // from its start, as it is, it does not.
    let long = d.run(sleep, 1.0);
    let within = d.run_with_timeout(sleep, 0.7, Duration::from_secs(1));
    let past = d.run_with_timeout(sleep, 5.0, Duration::from_millis(300));
    let r = d.get_results_with(&[long, within, past], Fetch::default().within(WAIT));
    let r = r.map_err(fail)?;
    check(r[0].is_ok() && r[1].is_ok(), format!("finished in time: {r:?}"))?;
    check(matches!(r[2], Err(TaskError::TimedOut { .. })), format!("the agent's timeout: {r:?}"))?;
    let log = server.process.log_text();
    check(log.contains("tasks with a timeout started"), "the agent reported the starts")?;
    check(!log.contains("settled by the server"), format!("no false settlement:\n{log}"))
}

/// One frame: the length prefix and the named MessagePack of `msg`.
fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).expect("encodes");
    buf.to_vec()
}

/// `bytes` after the preface of a peer that does not encrypt (the server has no secret).
fn plain(bytes: &[u8]) -> Vec<u8> {
    let preface = Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt: false };
    [frame(&preface), bytes.to_vec()].concat()
}

/// What the server logs when it refuses each case of the hostile corpus below: one line per
/// refusal, counted as it happens.
fn refusal_logged_for(case: &str) -> &'static str {
    match case {
        // "GET / H" read as a length.
        "garbage" | "garbage after the preface" => "frame of 1195725856 bytes exceeds the limit",
        "random bytes" => "frame of 12285747 bytes exceeds the limit",
        "length past the limit" => "frame of 4294967295 bytes exceeds the limit",
        "handshake frame too large" => "frame of 1048576 bytes exceeds the limit",
        "truncated preface" => "stream ended inside a frame (4 of",
        "wrong shape" => "expected struct Preface",
        "truncated hello" => "stream ended inside a frame (9 of",
        "hello of the wrong shape" => "expected struct Hello",
        "unknown role" => "unknown variant `Wizard`",
        "result for a task not held" => "sent a result for a task it does not hold",
        "a driver's message of the wrong shape" => "bad frame from driver",
        "version 99" => "protocol version 99 is not supported",
        _ => "a case without a needle",
    }
}

fn hostile_input_is_refused_while_a_driver_keeps_working() -> Result<(), Failed> {
    // Long enough for a thousand connections to be accepted before the first is closed.
    const HANDSHAKE_LIMIT: Duration = Duration::from_secs(3);
    let server = start_server(&["--handshake-timeout", "3"]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "worker").map_err(fail)?;
    let d = driver(&server.addr);
    let before: Vec<_> = (0..500u64).map(|i| d.run(echo::<u64>(), i)).collect();

    let agent_hello = |version| Hello {
        version,
        role: Role::Agent {
            host: "stranger".into(),
            workers: 1,
            tasks: vec![],
            heartbeat_ms: 0,
            agent_id: 0,
            replaces: 0,
            capacity: None,
            cache_size: 0,
            ends_in_ms: 0,
            allocation: String::new(),
        },
        nonce: Bytes::new(),
    };
    let mut wrong_shape = frame(&42u64);
    wrong_shape.extend(frame(&"not a hello"));
    let mut hello_of_wrong_shape = frame(&42u64);
    hello_of_wrong_shape.extend(frame(&"not a hello"));
    let unknown_kind = {
        // A hello whose role is a variant no server knows.
        #[derive(serde::Serialize)]
        enum FakeRole {
            Wizard { spells: u32 },
        }
        #[derive(serde::Serialize)]
        struct FakeHello {
            version: u32,
            role: FakeRole,
        }
        frame(&FakeHello {
            version: CLUSTER_PROTOCOL_VERSION,
            role: FakeRole::Wizard { spells: 3 },
        })
    };
    let admitted_then_garbage = {
        let hello = Hello {
            version: CLUSTER_PROTOCOL_VERSION,
            role: Role::Driver {
                name: "stranger".into(),
                session: String::new(),
                attach: false,
                heartbeat_ms: 0,
            },
            nonce: Bytes::new(),
        };
        let mut bytes = frame(&hello);
        bytes.extend(frame(&("Submit", "everything")));
        bytes
    };
    let result_not_held = {
        let mut bytes = frame(&agent_hello(CLUSTER_PROTOCOL_VERSION));
        let value = Outcome::Value(Bytes::from_static(b"\x01"));
        bytes.extend(frame(&FromAgent::Done(vec![Report::unstarted(TaskKey::new(12345), value)])));
        bytes
    };
    let mut corpus = blitzen_tests::hostile_bytes();
    corpus.extend([
        ("truncated preface", frame(&Preface { version: 1, encrypt: false })[..5].to_vec()),
        ("wrong shape", wrong_shape),
        // From here on, after a valid preface: the server answers it, then closes.
        ("garbage after the preface", plain(b"GET / HTTP/1.1\r\n\r\n")),
        ("truncated hello", plain(&frame(&agent_hello(CLUSTER_PROTOCOL_VERSION))[..9])),
        ("hello of the wrong shape", plain(&hello_of_wrong_shape)),
        ("unknown role", plain(&unknown_kind)),
        ("result for a task not held", plain(&result_not_held)),
        ("a driver's message of the wrong shape", plain(&admitted_then_garbage)),
    ]);
    let preface_answer = frame(&PrefaceReply::Plain);
    // Each refusal ends in a close (EOF or reset: `poke` fails on a server that stays silent),
    // and adds its own line to the log.
    let refusals_logged = |what: &str| {
        let needle = refusal_logged_for(what);
        server.process.log_text().lines().filter(|l| l.contains(needle)).count()
    };
    for (what, bytes) in &corpus {
        let logged = refusals_logged(what);
        let answer = poke(&server.addr, bytes, true).map_err(|e| fail(format!("{what}: {e}")))?;
        if *what == "result for a task not held" || what.starts_with("a driver's") {
            // Admitted (no secret on this server), then thrown out for what came next.
            let welcomed = answer.len() > preface_answer.len() + 4;
            check(welcomed, format!("{what}: the welcome came first"))?;
        } else if bytes
            .starts_with(&frame(&Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt: false }))
        {
            check(answer == preface_answer, format!("{what}: answered {} bytes", answer.len()))?;
        } else {
            check(answer.is_empty(), format!("{what}: answered {} bytes", answer.len()))?;
        }
        let needle = refusal_logged_for(what);
        let found = server.process.wait_for_log(needle, logged + 1, WAIT / 6);
        check(
            found,
            format!("{what}: no new `{needle}` in the log:\n{}", server.process.log_text()),
        )?;
    }
    let old = frame(&Preface { version: 99, encrypt: false });
    let logged = refusals_logged("version 99");
    let answer = poke(&server.addr, &old, false).map_err(fail)?;
    let reply: PrefaceReply =
        blitzen_protocol::frame::decode(answer.get(4..).unwrap_or_default()).map_err(fail)?;
    match reply {
        PrefaceReply::Refusal(r) => check(r.reason.contains("version 99"), &r.reason)?,
        other => return Err(format!("wrong version admitted: {other:?}").into()),
    }
    let found = server.process.wait_for_log(refusal_logged_for("version 99"), logged + 1, WAIT);
    check(found, format!("the old version's refusal is logged:\n{}", server.process.log_text()))?;

    // A thousand connections that never speak: memory bounded while the server holds them all,
    // and each closed once the handshake limit has passed, not before.
    let pid = server.process.pid();
    let rss_before = rss_bytes(pid).ok_or("the server's memory cannot be read")?;
    let opened = std::time::Instant::now();
    let idle: Vec<TcpStream> = (0..1_000)
        .map(|_| TcpStream::connect(&server.addr))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let ours: Vec<std::net::SocketAddr> =
        idle.iter().map(TcpStream::local_addr).collect::<Result<_, _>>().map_err(fail)?;
    let during: Vec<_> = (500..1_000u64).map(|i| d.run(echo::<u64>(), i)).collect();
    // The server holds them once it has accepted them: a descriptor each. (Another process's
    // descriptors tell nobody when they change: read again every 10 ms.)
    let mut held = 0;
    while held < ours.len() && opened.elapsed() < HANDSHAKE_LIMIT {
        std::thread::sleep(Duration::from_millis(10));
        held = blitzen_tests::held_connections(pid, &ours).map_err(fail)?;
    }
    let rss_during = rss_bytes(pid).ok_or("the server's memory cannot be read")?;
    check(held == ours.len(), format!("the server holds {held} of the 1,000 idle connections"))?;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).map_err(fail)?;
        let rest = blitzen_tests::read_until_closed(&mut s)
            .map_err(|e| fail(format!("an idle connection: {e}")))?;
        check(rest.is_empty(), "an idle connection got bytes")?;
    }
    let closed_after = opened.elapsed();
    check(
        closed_after >= HANDSHAKE_LIMIT,
        format!("idle connections closed after {closed_after:?}"),
    )?;
    check(
        rss_during < rss_before + (64 << 20),
        format!("server memory grew from {rss_before} to {rss_during} bytes"),
    )?;
    check(
        server.process.wait_for_log("not completed in time", 1_000, WAIT / 6),
        "each idle connection's end is logged",
    )?;

    // The driver lost nothing.
    for (ids, offset) in [(before, 0), (during, 500)] {
        let values = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
        for (i, v) in values.into_iter().enumerate() {
            check(v.map_err(fail)? == i as u64 + offset, format!("result {i}"))?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    blitzen_tests::tally::own_agent_main();
    let args = Arguments::from_args();
    let netns = netns_permitted();
    if !netns {
        eprintln!(
            "a_partitioned_agent_is_replaced_and_rejoins_when_healed is skipped: creating \
             network namespaces needs root (run the suite as root to include it)"
        );
    }
    let trials = vec![
        trial!(killing_an_agent_midway_loses_no_task),
        trial!(a_frozen_agent_is_detected_and_its_late_results_are_dropped),
        trial!(a_live_agent_on_a_slow_link_delivers_a_large_result_once),
        trial!(an_idle_agent_survives_a_stalled_server),
        trial!(a_frozen_driver_link_is_detected_on_both_ends),
        trial!(a_cut_driver_link_reconnects_and_loses_nothing),
        trial!(a_cut_agent_link_reconnects_and_loses_nothing),
        trial!(an_agent_on_a_silent_link_notices_and_reconnects),
        trial!(a_result_lost_in_transit_is_sent_again_not_rerun),
        trial!(hostile_input_is_refused_while_a_driver_keeps_working),
        trial!(an_agent_that_never_answers_has_its_timed_task_settled),
        trial!(a_live_agent_answers_before_the_servers_deadline),
        trial!(a_partitioned_agent_is_replaced_and_rejoins_when_healed).with_ignored_flag(!netns),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
