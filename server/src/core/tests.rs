//! Unit tests of the core: events in, assignments and reports out. Each turn ends with
//! [`Core::end_turn`], as in [`Core::run`].
use std::time::{Duration, Instant};

use super::agents::MAX_CREDIT;
use super::*;
use crate::store::Change;
use blitzen_protocol::cluster::{Submission, TaskReport};
use blitzen_protocol::ids::KindIndex;
use blitzen_protocol::{Finished, Outcome};
use bytes::Bytes;

/// Connection `n`.
pub(super) fn conn(n: u64) -> ConnId {
    ConnId::new(n)
}

/// A submission with no timeout and no retries.
pub(super) fn submission(id: u64, kind: u32) -> Submission {
    Submission {
        id: DriverTaskId::new(id),
        kind: KindIndex::new(kind),
        args: Bytes::new(),
        timeout_ms: None,
        retries: 0,
        unrunnable_limit_ms: None,
    }
}

pub(super) fn kind(name: &str) -> TaskKind {
    TaskKind {
        name: name.into(),
        fingerprint: 7,
        signature: format!("fn {name}()"),
        request: None,
        label: None,
        stream: false,
    }
}

pub(super) fn core(config: ServerConfig) -> Core {
    Core::new(config, mpsc::unbounded_channel().1, None)
}

pub(super) fn driver(core: &mut Core, n: u64) -> mpsc::UnboundedReceiver<ToDriver> {
    let (tx, rx) = mpsc::unbounded_channel();
    let session = format!("s{n}");
    let name = format!("d{n}");
    core.on_event(Event::DriverJoined { conn: conn(n), name, session, attach: false, tx });
    rx
}

pub(super) fn agent(
    core: &mut Core,
    n: u64,
    workers: u32,
    kinds: &[&str],
) -> mpsc::UnboundedReceiver<ToAgent> {
    let (tx, rx) = mpsc::unbounded_channel();
    let kinds = kinds.iter().map(|k| kind(k)).collect();
    let agent = JoiningAgent {
        host: format!("a{n}"),
        workers,
        kinds,
        id: 1000 + n,
        replaces: 0,
        capacity: None,
    };
    let close = CancellationToken::new();
    core.on_event(Event::AgentJoined { conn: conn(n), agent, tx, close });
    rx
}

/// Submits tasks of kind `name`, declaring it again (a driver may; the table just grows).
pub(super) fn submit(core: &mut Core, n: u64, name: &str, ids: std::ops::Range<u64>) {
    let index = core.drivers.get(&conn(n)).map_or(0, |d| d.kinds.len() as u32);
    let tasks = ids.map(|id| submission(id, index)).collect();
    core.on_event(Event::Submit { conn: conn(n), kinds: vec![kind(name)], tasks });
}

/// Ends a turn, as the event loop does.
pub(super) fn turn(core: &mut Core) {
    core.end_turn();
}

pub(super) fn assigned(rx: &mut mpsc::UnboundedReceiver<ToAgent>) -> Vec<TaskKey> {
    let mut keys = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToAgent::Run(batch) = msg {
            keys.extend(batch.into_iter().map(|a| a.key));
        }
    }
    keys
}

pub(super) fn done(keys: &[TaskKey]) -> Vec<AgentResult> {
    keys.iter()
        .map(|&key| {
            let mut run = Finished::unstarted(Outcome::Value(Bytes::from_static(b"\x01")));
            run.elapsed_us = 1;
            AgentResult { key, worker_pid: Some(1), run }
        })
        .collect()
}

/// The driver and the driver's id of a task.
fn owner(core: &Core, key: &TaskKey) -> (u64, u64) {
    let task = &core.tasks[key];
    (task.driver.get(), task.id.get())
}

#[test]
fn fifo_within_a_driver_and_round_robin_between_drivers() {
    let mut c = core(ServerConfig::default());
    let _d1 = driver(&mut c, 1);
    let _d2 = driver(&mut c, 2);
    submit(&mut c, 1, "t", 0..3);
    submit(&mut c, 2, "t", 0..3);
    let mut a = agent(&mut c, 10, 3, &["t"]);
    turn(&mut c);
    let keys = assigned(&mut a);
    let owners: Vec<(u64, u64)> = keys.iter().map(|k| owner(&c, k)).collect();
    assert_eq!(owners, [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (2, 2)]);
}

#[test]
fn agents_get_only_what_they_can_run_within_their_credit() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    submit(&mut c, 1, "other", 0..1);
    submit(&mut c, 1, "t", 1..10);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let keys = assigned(&mut a);
    assert_eq!(keys.len(), 2, "one worker: credit for two tasks");
    assert!(keys.iter().all(|k| c.kind(c.tasks[k].kind).name == "t"));
    // The driver heard why `other` waits, once per kind.
    let mut notices = Vec::new();
    while let Ok(msg) = d.try_recv() {
        if let ToDriver::Waiting { ids, reason } = msg {
            notices.push((ids, reason));
        }
    }
    assert!(
        notices
            .iter()
            .any(|(ids, r)| ids == &[DriverTaskId::new(0)] && r.contains("no agent is connected")),
        "{notices:?}"
    );
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    // Results of 1 µs each: the credit opens up to the whole queue.
    assert_eq!(assigned(&mut a).len(), 7, "credit comes back, larger for tiny tasks");
}

#[test]
fn credit_follows_task_length() {
    let mut a = Agent {
        host: "h".into(),
        kinds: HashMap::new(),
        workers: 4,
        average_us: None,
        running: HashMap::new(),
        round_trip_us: None,
        resources: blitzen_protocol::Capacity::new(4, 1 << 30),
        usage: Default::default(),
        reserved_for: None,
        used: blitzen_protocol::Capacity::new(0, 0),
        tx: mpsc::unbounded_channel().0,
        close: CancellationToken::new(),
        outbox: Vec::new(),
        acks: Vec::new(),
        acks_since: None,
        unsaved: Vec::new(),
        id: 0,
        outcomes: Default::default(),
        connected_at: Instant::now(),
        last_heard: Instant::now(),
        reported: Vec::new(),
    };
    assert_eq!(a.capacity(), 8, "unknown tasks: two per worker");
    a.average_us = Some(100_000.0);
    assert_eq!(a.capacity(), 8, "long tasks: no more");
    a.average_us = Some(1_000.0);
    assert_eq!(a.capacity(), 28, "1 ms tasks: 5 ms of work per worker more");
    a.learn_round_trip(60_000.0, 10_000.0);
    a.learn_round_trip(120_000.0, 10_000.0);
    let rtt = a.round_trip_us.unwrap_or_default();
    assert!(
        (50_000.0..52_000.0).contains(&rtt),
        "a task that waited moves it only a little: {rtt}"
    );
    a.learn_round_trip(60_000.0, 10_000.0);
    assert_eq!(a.capacity(), 228, "1 ms tasks 50 ms away: 55 ms of work per worker more");
    a.average_us = Some(1.0);
    assert_eq!(a.capacity(), MAX_CREDIT);
}

#[test]
fn a_vanished_agents_tasks_run_elsewhere_in_order() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..6);
    let mut first = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let lost = assigned(&mut first);
    assert_eq!(lost.len(), 2);
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "gone".into() });
    let mut second = agent(&mut c, 11, 3, &["t"]);
    turn(&mut c);
    let keys = assigned(&mut second);
    assert_eq!(&keys[..2], &lost[..], "the lost tasks go first");
    assert_eq!(keys.len(), 6);
}

#[test]
fn unfetched_results_are_capped_by_count_and_age() {
    let mut c = core(ServerConfig { max_results: 2, ..ServerConfig::default() });
    let _d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..5);
    let mut a = agent(&mut c, 10, 4, &["t"]);
    turn(&mut c);
    let keys = assigned(&mut a);
    c.on_event(Event::DriverLeft { conn: conn(1), bye: false });
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    assert_eq!(c.cache.len(), 2);
    assert_eq!(c.cache.ids(conn(1)), [3, 4], "the newest are kept");

    assert!(c.drivers.contains_key(&conn(1)), "kept while results wait for it");
    c.cache = cache::ResultCache::new(Duration::ZERO, 2);
    let lost = TaskReport::unstarted(DriverTaskId::new(9), Outcome::Lost { reason: "r".into() });
    c.report(conn(1), lost, None);
    c.expire_results();
    assert_eq!(c.cache.len(), 0, "expired at once with a zero age cap");
    turn(&mut c);
    assert!(c.drivers.contains_key(&conn(1)), "its session is kept a while, to reconnect to");
    let long_ago = Instant::now().checked_sub(c.config.session_ttl + Duration::from_secs(1));
    c.drivers.get_mut(&conn(1)).expect("kept").departed = long_ago;
    turn(&mut c);
    assert!(
        c.drivers.is_empty() && c.rotation.is_empty(),
        "a departed driver with nothing left is forgotten"
    );
}

#[test]
fn acknowledged_results_leave_the_cache_and_the_limit_refuses_the_rest() {
    let mut c = core(ServerConfig { task_limit: 3, ..ServerConfig::default() });
    let mut d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..5);
    let mut refused = Vec::new();
    let mut a = agent(&mut c, 10, 4, &["t"]);
    turn(&mut c);
    while let Ok(msg) = d.try_recv() {
        if let ToDriver::Results(reports) = msg {
            refused.extend(
                reports
                    .into_iter()
                    .filter(|r| matches!(r.run.outcome, Outcome::Refused { .. }))
                    .map(|r| r.id.get()),
            );
        }
    }
    assert_eq!(refused, [3, 4]);
    let keys = assigned(&mut a);
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    c.on_event(Event::Ack { conn: conn(1), ids: (0..5).map(DriverTaskId::new).collect() });
    turn(&mut c);
    assert_eq!(c.cache.len(), 0);
    assert_eq!(c.cache.order_len(), 0);
    assert!(c.tasks.is_empty());
}

#[test]
fn drivers_hear_how_many_tasks_were_taken() {
    let mut c = core(ServerConfig { task_limit: 3, ..ServerConfig::default() });
    let mut d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..2);
    turn(&mut c);
    submit(&mut c, 1, "t", 2..5);
    turn(&mut c);
    let mut counts = Vec::new();
    let mut refused = 0;
    while let Ok(msg) = d.try_recv() {
        match msg {
            ToDriver::Accepted { count } => counts.push(count),
            ToDriver::Results(r) => {
                refused +=
                    r.iter().filter(|r| matches!(r.run.outcome, Outcome::Refused { .. })).count()
            }
            _ => {}
        }
    }
    assert_eq!(counts, [2, 5], "refused tasks count as taken: they were answered");
    assert_eq!(refused, 2);
    turn(&mut c);
    assert!(d.try_recv().is_err(), "no count without new submissions");
}

#[test]
fn undeclared_kinds_are_refused_not_queued() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let bad = submission(9, 3);
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind("t")], tasks: vec![bad] });
    turn(&mut c);
    assert!(c.tasks.is_empty());
    let reasons = outcomes(&mut d);
    assert!(
        matches!(&reasons[..], [(9, Outcome::Refused { reason })] if reason.contains("never declared")),
        "{reasons:?}"
    );
}

#[test]
fn assignments_use_the_agents_own_kind_numbers() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["a", "b", "c"]);
    submit(&mut c, 1, "c", 0..1);
    turn(&mut c);
    let mut kinds = Vec::new();
    while let Ok(ToAgent::Run(batch)) = a.try_recv() {
        kinds.extend(batch.into_iter().map(|t| t.kind));
    }
    assert_eq!(kinds, [KindIndex::new(2)], "`c` is the third task the agent announced");
}

/// Ids and outcomes of the results a driver received.
fn outcomes(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<(u64, Outcome)> {
    let mut got = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToDriver::Results(batch) = msg {
            got.extend(batch.into_iter().map(|r| (r.id.get(), r.run.outcome)));
        }
    }
    got
}

/// Ids of the results a driver received.
fn reported(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<u64> {
    outcomes(rx).into_iter().map(|(id, _)| id).collect()
}

#[test]
fn a_task_that_ran_twice_reaches_its_driver_once() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    let keys = assigned(&mut a);
    assert_eq!(keys.len(), 1);
    // The agent goes silent and is counted lost; the task runs again on another agent.
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "no heartbeat".into() });
    let mut b = agent(&mut c, 11, 1, &["t"]);
    turn(&mut c);
    assert_eq!(assigned(&mut b), keys, "rerun elsewhere under the same key");
    // The first agent comes back with its late result: it is the first, so it is kept.
    let _a2 = agent(&mut c, 12, 1, &["t"]);
    c.on_event(Event::AgentDone { conn: conn(12), results: done(&keys), recovered: true });
    turn(&mut c);
    assert_eq!(reported(&mut d), [0]);
    // The rerun's result is a duplicate: dropped, and not a protocol violation.
    c.on_event(Event::AgentDone { conn: conn(11), results: done(&keys), recovered: false });
    turn(&mut c);
    assert_eq!(reported(&mut d), Vec::<u64>::new(), "delivered exactly once");
    assert!(!c.agents[&conn(11)].close.is_cancelled());
    assert!(c.agents[&conn(11)].running.is_empty(), "its credit is back");
}

#[test]
fn a_late_result_settles_a_requeued_task_before_it_runs_again() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    let keys = assigned(&mut a);
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "connection closed".into() });
    submit(&mut c, 1, "t", 1..2);
    let _a2 = agent(&mut c, 12, 1, &["other"]);
    c.on_event(Event::AgentDone { conn: conn(12), results: done(&keys), recovered: true });
    turn(&mut c);
    assert_eq!(reported(&mut d), [0]);
    let mut b = agent(&mut c, 11, 2, &["t"]);
    turn(&mut c);
    let next: Vec<u64> = assigned(&mut b).iter().map(|k| owner(&c, k).1).collect();
    assert_eq!(next, [1], "the settled task is not handed out again; the queue goes on");
}

#[test]
fn a_result_for_a_task_the_agent_does_not_hold_closes_its_connection() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    let _b = agent(&mut c, 11, 1, &["t"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    let mut keys = assigned(&mut a);
    if keys.is_empty() {
        keys = c.agents[&conn(11)].running.keys().copied().collect();
        c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
        assert!(c.agents[&conn(10)].close.is_cancelled());
    } else {
        c.on_event(Event::AgentDone { conn: conn(11), results: done(&keys), recovered: false });
        assert!(c.agents[&conn(11)].close.is_cancelled());
    }
    turn(&mut c);
    assert_eq!(reported(&mut d), Vec::<u64>::new(), "the bogus result is not delivered");
    assert_eq!(c.tasks.len(), 1, "the task is still held for its real agent");
}

#[test]
fn a_started_task_past_its_deadline_is_settled_by_the_server() {
    let config = ServerConfig { deadline_grace: Duration::ZERO, ..ServerConfig::default() };
    let mut c = core(config);
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 2, &["t"]);
    let timed = Submission { timeout_ms: Some(0), ..submission(0, 0) };
    let untimed = submission(1, 0);
    c.on_event(Event::Submit {
        conn: conn(1),
        kinds: vec![kind("t")],
        tasks: vec![timed, untimed],
    });
    turn(&mut c);
    let keys = assigned(&mut a);
    c.on_event(Event::AgentStarted { conn: conn(10), keys: keys.clone() });
    c.settle_overdue();
    turn(&mut c);
    let settled = outcomes(&mut d);
    assert!(
        matches!(&settled[..], [(0, Outcome::Lost { reason })] if reason.contains("settled by the server")),
        "only the task with a timeout is settled: {settled:?}"
    );
    // Its agent's answer, if it ever comes, is a duplicate; the other task is still held.
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    assert_eq!(reported(&mut d), [1]);
    assert!(!c.agents[&conn(10)].close.is_cancelled());
}

#[test]
fn a_recovered_result_for_a_task_never_lost_closes_the_connection() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    let _b = agent(&mut c, 11, 1, &["other"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    let keys = assigned(&mut a);
    // Agent 11 never held it, and nobody lost it: it cannot have a late result.
    c.on_event(Event::AgentDone { conn: conn(11), results: done(&keys), recovered: true });
    turn(&mut c);
    assert!(c.agents[&conn(11)].close.is_cancelled());
    assert_eq!(reported(&mut d), Vec::<u64>::new());
    assert_eq!(c.tasks.len(), 1, "still held for the agent running it");
}

/// What a driver heard: notes of waiting tasks, warnings, and the outcomes of results.
#[derive(Debug, Default)]
pub(super) struct Heard {
    pub notes: Vec<(Vec<DriverTaskId>, String)>,
    pub warnings: Vec<(u64, String)>,
    pub outcomes: Vec<(u64, Outcome)>,
}

pub(super) fn heard(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Heard {
    let mut h = Heard::default();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            ToDriver::Waiting { ids, reason } => h.notes.push((ids, reason)),
            ToDriver::Stalled { tasks, reason, .. } => h.warnings.push((tasks, reason)),
            ToDriver::Results(reports) => {
                h.outcomes.extend(reports.into_iter().map(|r| (r.id.get(), r.run.outcome)))
            }
            _ => {}
        }
    }
    h
}

fn submit_limited(core: &mut Core, n: u64, name: &str, id: u64, limit_ms: u64) {
    let index = core.drivers.get(&conn(n)).map_or(0, |d| d.kinds.len() as u32);
    let task = Submission { unrunnable_limit_ms: Some(limit_ms), ..submission(id, index) };
    core.on_event(Event::Submit { conn: conn(n), kinds: vec![kind(name)], tasks: vec![task] });
}

#[test]
fn waiting_tasks_are_warned_about_again_and_again_less_often() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let _a = agent(&mut c, 10, 1, &["t"]);
    let start = Instant::now();
    submit(&mut c, 1, "missing", 0..3);
    turn(&mut c);
    let first = heard(&mut d);
    assert_eq!(first.notes.len(), 1, "noted at once: {first:?}");
    assert!(first.notes[0].1.contains("no connected agent has a task named `missing`"));
    assert!(first.warnings.is_empty(), "no warning before a second has passed");
    // Warnings at about 1 s, 11 s, 31 s, 71 s: each interval twice the one before.
    let mut warned_at = Vec::new();
    let mut now = start;
    loop {
        let next = c.next_waiting_timer().expect("a timer while tasks wait");
        assert!(next > now, "the timer moves on");
        if next > start + Duration::from_secs(80) {
            break;
        }
        now = next;
        c.on_waiting_timer(now);
        let h = heard(&mut d);
        if let Some((tasks, reason)) = h.warnings.first() {
            assert_eq!(*tasks, 3, "{reason}");
            warned_at.push((now - start).as_secs());
        }
    }
    assert_eq!(warned_at, [1, 11, 31, 71]);
    // An agent with the task joins: the warnings stop and the tasks run.
    let mut b = agent(&mut c, 11, 3, &["missing"]);
    turn(&mut c);
    assert_eq!(assigned(&mut b).len(), 3);
    assert_eq!(c.next_waiting_timer(), None, "nothing waits");
}

#[test]
fn a_task_with_an_unrunnable_limit_ends_once_it_waited_that_long_without_a_break() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let start = Instant::now();
    submit_limited(&mut c, 1, "t", 0, 5_000);
    submit(&mut c, 1, "t", 1..2);
    turn(&mut c);
    c.on_waiting_timer(start + Duration::from_secs(3));
    // An agent with `t` comes at 3 s and goes at once: the count starts again from there.
    let t = c.kind_ids[&("t".to_string(), 7, None, None, false)];
    let _a = agent(&mut c, 10, 1, &["other"]);
    if let Some(a) = c.agents.get_mut(&conn(10)) {
        a.kinds.insert(t, KindIndex::new(1));
    }
    c.kinds_runnable("a10");
    c.agents.remove(&conn(10));
    c.kinds_left(vec![t], start + Duration::from_secs(3));
    c.on_waiting_timer(start + Duration::from_secs(6));
    c.end_turn();
    let h = heard(&mut d);
    assert!(h.outcomes.is_empty(), "the limit counts from the agent's departure: {h:?}");
    c.on_waiting_timer(start + Duration::from_millis(8_001));
    c.end_turn();
    let h = heard(&mut d);
    match &h.outcomes[..] {
        [(0, Outcome::Unrunnable { reason })] => {
            assert!(reason.contains("no agent is connected to run `t`"), "{reason}");
            assert!(reason.contains("5s"), "{reason}");
        }
        other => panic!("expected task 0 to give up, got {other:?}"),
    }
    // The task without a limit still waits, and runs once an agent comes.
    let mut b = agent(&mut c, 11, 1, &["t"]);
    turn(&mut c);
    let keys = assigned(&mut b);
    assert_eq!(keys.iter().map(|k| owner(&c, k)).collect::<Vec<_>>(), [(1, 1)]);
}

#[test]
fn the_last_agent_with_a_kind_leaving_strands_its_queued_tasks() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..5);
    turn(&mut c);
    assert_eq!(assigned(&mut a).len(), 2);
    assert!(heard(&mut d).notes.is_empty(), "runnable: nothing to note");
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "gone".into() });
    let h = heard(&mut d);
    assert_eq!(h.notes.len(), 1, "{h:?}");
    assert_eq!(h.notes[0].0.len(), 5, "the queued tasks and the two it held");
    assert!(c.next_waiting_timer().is_some(), "a warning is due");
}

#[test]
fn a_reconnecting_driver_takes_its_session_over_and_is_owed_every_result() {
    let mut c = core(ServerConfig::default());
    let mut old = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 2, &["t"]);
    submit(&mut c, 1, "t", 0..6);
    turn(&mut c);
    let keys = assigned(&mut a);
    assert_eq!(keys.len(), 4);
    // Two finish while the driver is connected, two after its connection dropped.
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys[..2]), recovered: false });
    turn(&mut c);
    assert_eq!(heard(&mut old).outcomes.len(), 2, "sent, but never acknowledged");
    c.on_event(Event::DriverLeft { conn: conn(1), bye: false });
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys[2..]), recovered: false });
    turn(&mut c);
    // The driver comes back on connection 5 with its session.
    let (tx, mut new) = mpsc::unbounded_channel();
    let session = "s1".to_string();
    let name = "d1 again".to_string();
    c.on_event(Event::DriverJoined { conn: conn(5), name, session, attach: false, tx });
    turn(&mut c);
    match new.try_recv() {
        Ok(ToDriver::Session { resumed: true, accepted: 6, held, next_id: 6 })
            if held.is_empty() => {}
        other => panic!("expected the session first, got {other:?}"),
    }
    let owed = heard(&mut new);
    let mut ids: Vec<u64> = owed.outcomes.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3], "every result not acknowledged, including those sent before");
    // Acknowledged on the new connection; events of the old one are ignored from now on.
    let all: Vec<DriverTaskId> = (0..4).map(DriverTaskId::new).collect();
    c.on_event(Event::Ack { conn: conn(5), ids: all });
    c.on_event(Event::DriverLeft { conn: conn(1), bye: true });
    turn(&mut c);
    assert_eq!(c.cache.len(), 0);
    assert!(c.drivers.contains_key(&conn(1)), "the old connection's goodbye is not the driver's");
    // The last two tasks run and their results reach the new connection.
    let rest = assigned(&mut a);
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&rest), recovered: false });
    turn(&mut c);
    let ids: Vec<u64> = heard(&mut new).outcomes.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [4, 5]);
}

#[test]
fn results_are_acknowledged_and_a_reconnected_agent_replaces_its_dead_connection() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..2);
    turn(&mut c);
    let keys = assigned(&mut a);
    assert_eq!(keys.len(), 2);
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys[..1]), recovered: false });
    turn(&mut c);
    assert!(c.next_ack_due().is_some(), "held back a moment, for assignments to ride with");
    std::thread::sleep(Duration::from_millis(25));
    turn(&mut c);
    let mut acked = Vec::new();
    while let Ok(msg) = a.try_recv() {
        if let ToAgent::Ack(k) = msg {
            acked.extend(k);
        }
    }
    assert_eq!(acked, keys[..1], "acknowledged once the delay has passed");
    // The same agent process (id 1010) connects again before its old connection is noticed
    // dead: the old one is given up, and the result it recovers is expected, not a breach.
    let (tx, _new) = mpsc::unbounded_channel();
    let joining = JoiningAgent {
        host: "a10".into(),
        workers: 1,
        kinds: vec![kind("t")],
        id: 1010,
        replaces: 0,
        capacity: None,
    };
    let close = CancellationToken::new();
    c.on_event(Event::AgentJoined { conn: conn(11), agent: joining, tx, close: close.clone() });
    assert!(!c.agents.contains_key(&conn(10)), "the dead connection is gone");
    c.on_event(Event::AgentDone { conn: conn(11), results: done(&keys[1..]), recovered: true });
    turn(&mut c);
    assert!(!close.is_cancelled(), "a recovered result of the replaced connection is expected");
    let ids: Vec<u64> = heard(&mut d).outcomes.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [0, 1], "each result once");
}

#[test]
fn with_a_data_directory_acceptance_and_acknowledgements_wait_for_the_commit() {
    let (batches, saved) = std::sync::mpsc::channel();
    let mut c = Core::new(
        ServerConfig::default(),
        mpsc::unbounded_channel().1,
        Some((batches, crate::store::Loaded::default())),
    );
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    let accepted = |d: &mut mpsc::UnboundedReceiver<ToDriver>| {
        std::iter::from_fn(|| d.try_recv().ok()).any(|m| matches!(m, ToDriver::Accepted { .. }))
    };
    assert!(!accepted(&mut d), "not before the batch is committed");
    let (batch, changes) = saved.try_recv().expect("a batch");
    assert!(changes.iter().any(|ch| matches!(ch, Change::Tasks { .. })), "{changes:?}");
    c.on_event(Event::Committed { batch });
    turn(&mut c);
    assert!(accepted(&mut d), "accepted once saved");
    // The result is saved before the agent hears it arrived.
    let keys = assigned(&mut a);
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    std::thread::sleep(Duration::from_millis(25));
    turn(&mut c);
    let acked = |a: &mut mpsc::UnboundedReceiver<ToAgent>| {
        std::iter::from_fn(|| a.try_recv().ok()).any(|m| matches!(m, ToAgent::Ack(_)))
    };
    assert!(!acked(&mut a), "no acknowledgement before the commit");
    let (batch, changes) = saved.try_recv().expect("a second batch");
    assert!(changes.iter().any(|ch| matches!(ch, Change::Result { .. })), "{changes:?}");
    c.on_event(Event::Committed { batch });
    turn(&mut c);
    std::thread::sleep(Duration::from_millis(25));
    turn(&mut c);
    assert!(acked(&mut a), "acknowledged once saved");
    // A duplicate result changes nothing, but is acknowledged after an (empty) commit all the same.
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: true });
    turn(&mut c);
    let (batch, changes) = saved.try_recv().expect("a batch for the acknowledgement");
    assert!(changes.is_empty());
    c.on_event(Event::Committed { batch });
    turn(&mut c);
    std::thread::sleep(Duration::from_millis(25));
    turn(&mut c);
    assert!(acked(&mut a));
}

#[test]
fn results_evicted_by_the_caps_leave_the_data_directory_too() {
    let (batches, saved) = std::sync::mpsc::channel();
    let config = ServerConfig { max_results: 1, ..ServerConfig::default() };
    let mut c = Core::new(config, mpsc::unbounded_channel().1, Some((batches, Default::default())));
    let _d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 2, &["t"]);
    submit(&mut c, 1, "t", 0..2);
    turn(&mut c);
    c.on_event(Event::DriverLeft { conn: conn(1), bye: false });
    let keys = assigned(&mut a);
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    turn(&mut c);
    let changes: Vec<Change> =
        std::iter::from_fn(|| saved.try_recv().ok()).flat_map(|(_, c)| c).collect();
    let evicted =
        changes.iter().filter(|ch| matches!(ch, Change::ResultAcked { id: 0, .. })).count();
    assert_eq!(evicted, 1, "the older result is evicted on disk as in memory: {changes:?}");
}

#[test]
fn while_the_data_directory_takes_no_writes_new_tasks_are_refused_saying_why() {
    let (batches, _saved) = std::sync::mpsc::channel();
    let mut c = Core::new(
        ServerConfig::default(),
        mpsc::unbounded_channel().1,
        Some((batches, Default::default())),
    );
    let mut d = driver(&mut c, 1);
    c.on_event(Event::SaveFailed { error: "No space left on device".into() });
    submit(&mut c, 1, "t", 0..2);
    turn(&mut c);
    let h = heard(&mut d);
    assert_eq!(h.outcomes.len(), 2, "{h:?}");
    for (_, outcome) in &h.outcomes {
        let Outcome::Refused { reason } = outcome else { panic!("{outcome:?}") };
        assert!(reason.contains("cannot save to its data directory (No space left"), "{reason}");
    }
    // Space is back: a commit succeeds, and tasks are taken again.
    c.on_event(Event::Committed { batch: 0 });
    submit(&mut c, 1, "t", 2..3);
    turn(&mut c);
    assert!(heard(&mut d).outcomes.is_empty(), "queued, not refused");
}

#[test]
fn after_a_restart_restored_tasks_wait_for_the_saved_agents_and_finish_where_they_run() {
    use crate::store::{Loaded, SessionRecord, TaskRecord};
    let record = |seq: u64| TaskRecord {
        kind: 0,
        args: Bytes::new(),
        timeout_ms: Some(60_000),
        retries: 0,
        unrunnable_limit_ms: 0,
        seq,
        attempts: 0,
    };
    let loaded = Loaded {
        sessions: vec![("s1".into(), SessionRecord { name: "d1".into(), accepted: 3, next_id: 3 })],
        tasks: (0..3).map(|i| ("s1".to_string(), i, record(10 + i))).collect(),
        kinds: vec![kind("t")],
        // Agent 1010 (`agent(.., 10, ..)`) was connected when the server stopped.
        agents: vec![(1010, "a10".into())],
        next_seq: 13,
        ..Loaded::default()
    };
    let (batches, _saved) = std::sync::mpsc::channel();
    let mut c =
        Core::new(ServerConfig::default(), mpsc::unbounded_channel().1, Some((batches, loaded)));
    // A new agent gets nothing while the restored tasks are held.
    let mut other = agent(&mut c, 20, 4, &["t"]);
    turn(&mut c);
    assert!(assigned(&mut other).is_empty(), "held while the saved agent may come back");
    // The saved agent comes back holding seq 11 (running) and 99 (unknown here).
    let mut back = agent(&mut c, 10, 1, &["t"]);
    c.on_event(Event::AgentReattach { conn: conn(10), seqs: vec![11, 99] });
    let mut kept = None;
    while let Ok(msg) = back.try_recv() {
        if let ToAgent::Reattached(pairs) = msg {
            kept = Some(pairs);
        }
    }
    let kept = kept.expect("answered");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let (seq, key) = kept[0];
    assert_eq!((seq, owner(&c, &key)), (11, (u64::MAX, 1)), "bound under a new key");
    assert_eq!(c.tasks[&key].agent.get(), Some(conn(10)));
    // Every saved agent is back: the rest are queued again, oldest first, and run.
    turn(&mut c);
    assert!(c.restart.is_none());
    let mut ids: Vec<u64> = (assigned(&mut other).into_iter().chain(assigned(&mut back)))
        .map(|k| owner(&c, &k).1)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 2], "the unclaimed tasks run; the claimed one is not started again");
    // Its result is taken once.
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&[key]), recovered: false });
    assert!(c.tasks.get(key).is_none());
    // New tasks get numbers above every saved one.
    let _d = driver(&mut c, 1);
    assert!(c.next_seq >= 13);
}

/// Every result a driver was sent so far, by the driver's id.
fn results(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<(u64, Outcome)> {
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToDriver::Results(batch) = msg {
            out.extend(batch.into_iter().map(|r| (r.id.get(), r.run.outcome)));
        }
    }
    out
}

fn cancels(rx: &mut mpsc::UnboundedReceiver<ToAgent>) -> Vec<TaskKey> {
    let mut keys = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToAgent::Cancel(batch) = msg {
            keys.extend(batch);
        }
    }
    keys
}

#[test]
fn a_cancel_ends_queued_tasks_here_and_asks_the_agent_for_running_ones() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..5);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let held = assigned(&mut a);
    assert_eq!(held.len(), 2, "credit for two");
    let ids = [0, 1, 3, 4, 99].map(DriverTaskId::new).to_vec();
    c.on_event(Event::Cancel { conn: conn(1), ids });
    turn(&mut c);
    let mut sent = cancels(&mut a);
    sent.sort();
    let mut expected = held.clone();
    expected.sort();
    assert_eq!(sent, expected, "the agent is asked to cancel what it holds");
    let got = results(&mut d);
    let ended: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ended, [3, 4], "queued ones end at once; 2 was not asked");
    assert!(got.iter().all(|(_, o)| matches!(o, Outcome::Cancelled { .. })), "{got:?}");
    // The first final state wins: task 0 finished before the agent got the cancel.
    let first = held.iter().copied().find(|k| c.tasks[k].id.get() == 0).expect("task 0");
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&[first]), recovered: false });
    turn(&mut c);
    assert!(matches!(results(&mut d)[..], [(0, Outcome::Value(_))]), "task 0 keeps its value");
    // Task 1's agent vanishes before answering: it ends cancelled, it does not run again.
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "gone".into() });
    turn(&mut c);
    assert!(
        matches!(&results(&mut d)[..], [(1, Outcome::Cancelled { .. })]),
        "a cancelled task whose agent left is not run again"
    );
    let status = c.status();
    assert_eq!((status.server.cancelled, status.server.finished), (3, 4));
    assert_eq!((status.server.queued, status.server.running), (1, 0), "task 2 still waits");
    let session = &status.sessions[0];
    assert_eq!((session.submitted, session.done, session.cancelled), (5, 1, 3));
}

#[test]
fn failures_are_kept_with_their_whole_error_for_observers() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    submit(&mut c, 1, "boom", 0..1);
    let mut a = agent(&mut c, 10, 1, &["boom"]);
    turn(&mut c);
    let key = assigned(&mut a)[0];
    let outcome = Outcome::Panicked {
        message: "index out of bounds".into(),
        location: Some("src/lib.rs:3:5".into()),
        backtrace: None,
    };
    let result = AgentResult { key, worker_pid: Some(4242), run: Finished::unstarted(outcome) };
    c.on_event(Event::AgentDone { conn: conn(10), results: vec![result], recovered: false });
    turn(&mut c);
    assert_eq!(results(&mut d).len(), 1);
    let status = c.status();
    let f = &status.recent_failures[0];
    assert_eq!((f.session.as_str(), f.id, f.task.as_str()), ("s1", 0, "boom"));
    assert_eq!((f.kind.as_str(), f.host.as_deref(), f.pid), ("Panicked", Some("a10"), Some(4242)));
    assert!(
        f.error.contains("index out of bounds") && f.error.contains("src/lib.rs:3:5"),
        "{}",
        f.error
    );
    assert_eq!((status.agents[0].failed, status.sessions[0].failed), (1, 1));
    match c.observe(FromObserver::Failures { session: "s1".into() }) {
        ToObserver::Failures(list) => assert_eq!(list, status.recent_failures),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.observe(FromObserver::Failures { session: "nope".into() }),
        ToObserver::Error(e) if e.contains("no session `nope`")
    ));
}
