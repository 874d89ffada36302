//! Unit tests of the core across connections and restarts: a driver that reconnects, an agent
//! that replaces its dead connection, the data directory, a restart with agents re-attaching,
//! cancels, and failures kept for observers.

use std::time::Duration;

use super::tests::{agent, assigned, conn, core, done, driver, key, kind, owner, submit, turn};
use super::tests_results::heard;
use super::*;
use crate::store::Change;
use blitzen_protocol::cluster::FromObserver;
use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::{Finished, Outcome};
use blitzen_protocol::{Report, WorkerInfo};
use bytes::Bytes;

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
        Ok(ToDriver::Session { resumed: true, accepted: 6, held, next_id: 6, .. })
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
    assert!(
        c.drivers.contains_key(&key(&c, 1)),
        "the old connection's goodbye is not the driver's"
    );
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
        cache_size: 0,
        ends_in: None,
        allocation: String::new(),
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
    // Nor does an agent get it: a server killed now would not know the task again, and its
    // driver would submit it again.
    assert!(assigned(&mut a).is_empty(), "not assigned before the batch is committed");
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
fn a_cancel_of_a_task_waiting_to_be_saved_follows_its_assignment_out() {
    let (batches, saved) = std::sync::mpsc::channel();
    let mut c = Core::new(
        ServerConfig::default(),
        mpsc::unbounded_channel().1,
        Some((batches, Default::default())),
    );
    let _d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    submit(&mut c, 1, "t", 0..1);
    turn(&mut c);
    c.on_event(Event::Cancel { conn: conn(1), ids: vec![DriverTaskId::new(0)] });
    turn(&mut c);
    assert!(a.try_recv().is_err(), "neither the task nor its cancel before the commit");
    let batch = std::iter::from_fn(|| saved.try_recv().ok()).map(|(b, _)| b).max();
    c.on_event(Event::Committed { batch: batch.expect("a batch") });
    turn(&mut c);
    let said: Vec<_> = std::iter::from_fn(|| a.try_recv().ok())
        .filter_map(|m| match m {
            ToAgent::Run(batch) => Some(format!("run {}", batch.len())),
            ToAgent::Cancel(keys) => Some(format!("cancel {}", keys.len())),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["run 1", "cancel 1"], "the cancel after the task it cancels");
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
    let (batch, _) = saved.try_recv().expect("the tasks' batch");
    c.on_event(Event::Committed { batch });
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
        inputs: None,
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
    assert_eq!((seq, owner(&c, &key)), (11, (1, 1)), "bound under a new key");
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
    let result = Report {
        id: key,
        worker: Some(WorkerInfo { pid: 4242, host: None, devices: Default::default() }),
        run: Finished::unstarted(outcome),
    };
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
