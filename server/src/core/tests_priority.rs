//! Unit tests of the core's priorities: within a driver's tasks the highest priority goes
//! first, and a queue that waits rises until it goes first (the aging bound).

use std::time::{Duration, Instant};

use super::tests::{agent, assigned, conn, core, done, driver, key, kind, submission, turn};
use super::*;

/// Submits tasks of `t` with `priority`.
fn submit_at(c: &mut Core, priority: i32, ids: std::ops::Range<u64>) {
    let index = c.drivers.get(&key(c, 1)).map_or(0, |d| d.kinds.len() as u32);
    let tasks = ids.map(|id| submission(id, index)).collect();
    let kind = TaskKind { priority, ..kind("t") };
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind], tasks });
}

/// The driver's ids of the tasks behind `keys`.
fn ids(c: &Core, keys: &[TaskKey]) -> Vec<u64> {
    keys.iter().filter_map(|&k| c.tasks.get(k)).map(|t| t.id.get()).collect()
}

#[test]
fn the_highest_priority_goes_first_then_the_oldest() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    submit_at(&mut c, 0, 0..6);
    submit_at(&mut c, 10, 6..10);
    submit_at(&mut c, -1, 10..11);
    turn(&mut c);
    // One worker: credit for two tasks at first.
    let mut a = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let first = assigned(&mut a);
    assert_eq!(ids(&c, &first), [6, 7], "priority 10 before the older priority 0");
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&first), recovered: false });
    turn(&mut c);
    let rest = assigned(&mut a);
    assert_eq!(ids(&c, &rest), [8, 9, 0, 1, 2, 3, 4, 5, 10]);
}

#[test]
fn a_queue_that_waited_rises_to_the_highest_and_goes_first_once() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    submit_at(&mut c, 0, 0..3);
    submit_at(&mut c, 10, 3..6);
    turn(&mut c);
    // Priority 0 has waited 20 s: risen to 10 (never above), and its task is the older.
    let low = c.kind_ids[&("t".to_string(), 7, None, None, false, 0)];
    if let Some(d) = c.drivers.get_mut(&key(&c, 1)) {
        d.waiting_since.insert(low, Instant::now() - Duration::from_secs(20));
    }
    let mut a = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let first = assigned(&mut a);
    assert_eq!(ids(&c, &first), [0, 3], "the risen queue once, then it waits anew");
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&first), recovered: false });
    turn(&mut c);
    assert_eq!(ids(&c, &assigned(&mut a)), [4, 5, 1, 2]);
}

#[test]
fn a_risen_queue_keeps_its_age_while_the_agent_is_full() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    submit_at(&mut c, 10, 0..2);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    turn(&mut c);
    let first = assigned(&mut a);
    assert_eq!(ids(&c, &first), [0, 1], "the agent is full");
    submit_at(&mut c, 0, 2..3);
    submit_at(&mut c, 10, 3..5);
    let low = c.kind_ids[&("t".to_string(), 7, None, None, false, 0)];
    let risen = Instant::now() - Duration::from_secs(20);
    if let Some(d) = c.drivers.get_mut(&key(&c, 1)) {
        d.waiting_since.insert(low, risen);
    }
    // Turns while the agent is full choose nothing, and take nothing of the low queue's age.
    turn(&mut c);
    turn(&mut c);
    assert!(assigned(&mut a).is_empty());
    let since = c.drivers.get(&key(&c, 1)).and_then(|d| d.waiting_since.get(&low).copied());
    assert_eq!(since, Some(risen));
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&first[..1]), recovered: false });
    turn(&mut c);
    assert_eq!(ids(&c, &assigned(&mut a))[..1], [2], "the risen low task, first");
}
