//! Unit tests of the core's results: a task that ran twice, a late or a wrong result, deadlines
//! of started tasks, and tasks no agent can run (warnings, giving up, stranding).

use std::time::{Duration, Instant};

use super::tests::{
    agent, assigned, conn, core, done, driver, key, kind, outcomes, owner, submission, submit, turn,
};
use super::*;
use blitzen_protocol::Outcome;
use blitzen_protocol::cluster::Submission;
use blitzen_protocol::ids::{DriverTaskId, KindIndex};

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
    let index = core.drivers.get(&key(core, n)).map_or(0, |d| d.kinds.len() as u32);
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
    let t = c.kind_ids[&("t".to_string(), 7, None, None, false, 0)];
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
