//! Unit tests of the core: events in, assignments and reports out. Each turn ends with
//! [`Core::end_turn`], as in [`Core::run`]. This file: the helpers every test file of the core
//! uses, and the queue — order, credit, caps, acknowledgements, kinds. `tests_results`: results
//! that come twice, late or wrong, deadlines and tasks nobody can run; `tests_sessions`:
//! drivers that come back, the data directory, restarts, cancels and failures.
use std::time::{Duration, Instant};

use super::agents::MAX_CREDIT;
use super::*;
use blitzen_protocol::cluster::Submission;
use blitzen_protocol::ids::{DriverTaskId, KindIndex};
use blitzen_protocol::{Finished, Outcome};
use blitzen_protocol::{Report, WorkerInfo};
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
        inputs: None,
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
        priority: 0,
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
    join(core, n, joining(n, workers, kinds))
}

/// What agent `n` announces: `workers` workers for `kinds`, and nothing more.
pub(super) fn joining(n: u64, workers: u32, kinds: &[&str]) -> JoiningAgent {
    JoiningAgent {
        host: format!("a{n}"),
        workers,
        kinds: kinds.iter().map(|k| kind(k)).collect(),
        id: 1000 + n,
        replaces: 0,
        capacity: None,
        cache_size: 0,
        ends_in: None,
        allocation: String::new(),
    }
}

/// Agent `n` joins on connection `n`, announcing `agent`; what it is sent arrives on the
/// receiver.
pub(super) fn join(
    core: &mut Core,
    n: u64,
    agent: JoiningAgent,
) -> mpsc::UnboundedReceiver<ToAgent> {
    let (tx, rx) = mpsc::unbounded_channel();
    let close = CancellationToken::new();
    core.on_event(Event::AgentJoined { conn: conn(n), agent, tx, close });
    rx
}

/// Submits tasks of kind `name`, declaring it again (a driver may; the table just grows).
pub(super) fn submit(core: &mut Core, n: u64, name: &str, ids: std::ops::Range<u64>) {
    let index = core.drivers.get(&key(core, n)).map_or(0, |d| d.kinds.len() as u32);
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

pub(super) fn done(keys: &[TaskKey]) -> Vec<Report<TaskKey>> {
    keys.iter()
        .map(|&key| {
            let mut run = Finished::unstarted(Outcome::Value(Bytes::from_static(b"\x01")));
            run.elapsed_us = 1;
            Report {
                id: key,
                worker: Some(WorkerInfo { pid: 1, host: None, devices: Default::default() }),
                run,
            }
        })
        .collect()
}

/// Ids and outcomes of the results a driver received.
pub(super) fn outcomes(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<(u64, Outcome)> {
    let mut got = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToDriver::Results(batch) = msg {
            got.extend(batch.into_iter().map(|r| (r.id.get(), r.run.outcome)));
        }
    }
    got
}

/// The driver (the `n` of [`driver`]: its session is `sN`) and the driver's id of a task.
pub(super) fn owner(core: &Core, key: &TaskKey) -> (u64, u64) {
    let task = &core.tasks[key];
    let session = core.drivers.get(&task.driver).map_or("", |d| d.session.as_str());
    (session.trim_start_matches('s').parse().unwrap_or(0), task.id.get())
}

/// The key of the driver that [`driver`] joined as `n` (by its session, `sN`).
pub(super) fn key(core: &Core, n: u64) -> DriverKey {
    core.sessions.get(&format!("s{n}")).copied().unwrap_or(DriverKey::new(0))
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
        averages: HashMap::new(),
        running: HashMap::new(),
        round_trip_us: None,
        resources: blitzen_protocol::Capacity::new(4, 1 << 30),
        usage: Default::default(),
        reserved_for: None,
        used: blitzen_protocol::Capacity::new(0, 0),
        tx: mpsc::unbounded_channel().0,
        close: CancellationToken::new(),
        outbox: Vec::new(),
        held_cancels: Vec::new(),
        acks: Vec::new(),
        acks_since: None,
        unsaved: Vec::new(),
        id: 0,
        outcomes: Default::default(),
        connected_at: Instant::now(),
        last_heard: Instant::now(),
        reported: Vec::new(),
        cache: super::shares::AgentCache::new(0),
        ends_at: None,
        allocation: String::new(),
        leaving: None,
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
    // By kind: a kind of 10 ms tasks is held two per worker, whatever the no-ops before it.
    let (noop, slow) = (KindId(0), KindId(1));
    a.averages.insert(noop, 1.0);
    a.averages.insert(slow, 10_000.0);
    assert_eq!(a.capacity_for(noop), MAX_CREDIT);
    assert_eq!(a.capacity_for(slow), 8 + 4 * 55_000 / 10_000);
    assert_eq!(a.capacity_for(KindId(2)), 8, "a kind not seen here yet: two per worker");
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
    assert_eq!(c.cache.ids(key(&c, 1)), [3, 4], "the newest are kept");

    assert!(c.drivers.contains_key(&key(&c, 1)), "kept while results wait for it");
    c.cache = cache::ResultCache::new(Duration::ZERO, 2);
    let lost = Report::unstarted(DriverTaskId::new(9), Outcome::Lost { reason: "r".into() });
    c.report(key(&c, 1), lost, None);
    c.expire_results();
    assert_eq!(c.cache.len(), 0, "expired at once with a zero age cap");
    turn(&mut c);
    assert!(c.drivers.contains_key(&key(&c, 1)), "its session is kept a while, to reconnect to");
    let long_ago = Instant::now().checked_sub(c.config.session_ttl + Duration::from_secs(1));
    c.drivers.get_mut(&key(&c, 1)).expect("kept").departed = long_ago;
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
