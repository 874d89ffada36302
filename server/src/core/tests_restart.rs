//! Unit tests of the hold after a restart: its grace used across restarts, agents proven ended
//! by a new process of their name, and what the status shows.

use std::time::Duration;

use super::tests::{agent, assigned, conn, kind, turn};
use super::*;
use crate::store::{Change, Loaded, SessionRecord, TaskRecord};
use bytes::Bytes;

/// What a data directory holds after a stop with tasks 10 to 13 restored and `agents` connected.
fn loaded(agents: &[(u64, &str)], reattach_used_ms: Option<u64>) -> Loaded {
    let record = |seq: u64| TaskRecord {
        kind: 0,
        args: Bytes::new(),
        timeout_ms: None,
        retries: 0,
        unrunnable_limit_ms: 0,
        seq,
        inputs: None,
        attempts: 0,
    };
    Loaded {
        sessions: vec![("s1".into(), SessionRecord { name: "d1".into(), accepted: 4, next_id: 4 })],
        tasks: (0..4).map(|i| ("s1".to_string(), i, record(10 + i))).collect(),
        kinds: vec![kind("t")],
        agents: agents.iter().map(|&(id, host)| (id, host.to_string())).collect(),
        next_seq: 14,
        reattach_used_ms,
        ..Loaded::default()
    }
}

/// A core restarted on `loaded`, with a grace of `grace`, and what it saves.
fn restarted(
    loaded: Loaded,
    grace: Duration,
) -> (Core, std::sync::mpsc::Receiver<(u64, Vec<Change>)>) {
    let (batches, saved) = std::sync::mpsc::channel();
    let config = ServerConfig { reattach_grace: grace, ..ServerConfig::default() };
    (Core::new(config, mpsc::unbounded_channel().1, Some((batches, loaded))), saved)
}

/// The grace used, as saved so far.
fn saved_used(saved: &std::sync::mpsc::Receiver<(u64, Vec<Change>)>) -> Vec<Option<u64>> {
    saved
        .try_iter()
        .flat_map(|(_, changes)| changes)
        .filter_map(|c| match c {
            Change::ReattachUsed { ms } => Some(ms),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hold_goes_on_from_the_grace_its_earlier_runs_used() {
    let grace = Duration::from_secs(30);
    // The first start of a hold: the whole grace, a quarter second of it counted at once.
    let (mut c, saved) = restarted(loaded(&[(1010, "a10")], None), grace);
    turn(&mut c);
    assert_eq!(saved_used(&saved), [Some(250)]);
    let left = c.next_release().map(|at| at.saturating_duration_since(Instant::now()));
    assert!(left.is_some_and(|l| l <= Duration::from_millis(250)), "a save is due: {left:?}");
    let status = c.status().restart.expect("shown");
    assert_eq!((status.held, status.awaiting.as_slice()), (4, &["a10".to_string()][..]));
    assert!(status.release_in_ms > 29_000 && status.release_in_ms <= 30_000, "{status:?}");

    // Started again after runs that used 20 s of it: 10 s are left, not a fresh 30.
    let (mut c, saved) = restarted(loaded(&[(1010, "a10")], Some(20_000)), grace);
    turn(&mut c);
    assert_eq!(saved_used(&saved), [Some(20_250)], "this start counts a quarter second at once");
    let status = c.status().restart.expect("shown");
    assert!(status.release_in_ms > 9_000 && status.release_in_ms <= 10_000, "{status:?}");
    assert!(status.grace_used_ms >= 20_250, "{status:?}");
    // What it uses is saved as it goes.
    c.restart.as_mut().expect("held").next_save = Instant::now();
    c.on_release_timer();
    turn(&mut c);
    let used = saved_used(&saved);
    assert!(matches!(used.as_slice(), &[Some(ms)] if ms >= 20_250), "{used:?}");

    // Runs that used the whole grace: released as this one starts.
    let (mut c, saved) = restarted(loaded(&[(1010, "a10")], Some(30_000)), grace);
    let mut other = agent(&mut c, 20, 4, &["t"]);
    c.on_release_timer();
    turn(&mut c);
    assert_eq!(assigned(&mut other).len(), 4, "released at once");
    assert_eq!(saved_used(&saved).last(), Some(&None), "the release is saved");
}

#[test]
fn the_hold_ends_once_its_grace_is_used_and_its_release_is_saved() {
    let (mut c, saved) = restarted(loaded(&[(1010, "a10")], Some(29_950)), Duration::from_secs(30));
    let mut other = agent(&mut c, 20, 4, &["t"]);
    turn(&mut c);
    assert!(assigned(&mut other).is_empty(), "held");
    std::thread::sleep(Duration::from_millis(60));
    c.on_release_timer();
    turn(&mut c);
    assert_eq!(assigned(&mut other).len(), 4, "released with the grace used up");
    assert!(c.status().restart.is_none());
    assert_eq!(saved_used(&saved).last(), Some(&None), "the release is saved");
}

#[test]
fn a_new_process_of_an_awaited_agent_ends_the_wait_for_the_old_one() {
    let (mut c, saved) =
        restarted(loaded(&[(1010, "a10"), (1011, "a11")], None), Duration::from_secs(30));
    let mut back = agent(&mut c, 10, 4, &["t"]);
    c.on_event(Event::AgentReattach { conn: conn(10), seqs: vec![] });
    turn(&mut c);
    assert!(assigned(&mut back).is_empty(), "a11 may still come back with what it runs");
    assert_eq!(c.status().restart.map(|r| r.awaiting), Some(vec!["a11".to_string()]));
    // A new process named a11 took over the old one's lock: the old one has ended.
    let (tx, mut replacement) = mpsc::unbounded_channel();
    let joining = JoiningAgent {
        host: "a11".into(),
        workers: 2,
        kinds: vec![kind("t")],
        id: 2011,
        replaces: 1011,
        capacity: None,
        cache_size: 0,
        ends_in: None,
        allocation: String::new(),
    };
    let close = tokio_util::sync::CancellationToken::new();
    c.on_event(Event::AgentJoined { conn: conn(11), agent: joining, tx, close });
    turn(&mut c);
    assert!(c.restart.is_none(), "nobody is awaited any more");
    let ran = assigned(&mut back).len() + assigned(&mut replacement).len();
    assert_eq!(ran, 4, "every held task runs");
    let gone: Vec<u64> = (saved.try_iter().flat_map(|(_, changes)| changes))
        .filter_map(|c| match c {
            Change::AgentGone { id } => Some(id),
            _ => None,
        })
        .collect();
    assert!(gone.contains(&1011), "the ended agent is forgotten in the directory: {gone:?}");
}

#[test]
fn a_new_process_of_a_connected_agent_gives_up_its_dead_connection() {
    let mut c = super::tests::core(ServerConfig::default());
    let _old = agent(&mut c, 10, 1, &["t"]);
    let (tx, _rx) = mpsc::unbounded_channel();
    let joining = JoiningAgent {
        host: "a10".into(),
        workers: 1,
        kinds: vec![kind("t")],
        id: 5000,
        replaces: 1010,
        capacity: None,
        cache_size: 0,
        ends_in: None,
        allocation: String::new(),
    };
    let close = tokio_util::sync::CancellationToken::new();
    c.on_event(Event::AgentJoined { conn: conn(11), agent: joining, tx, close });
    assert!(!c.agents.contains_key(&conn(10)), "the old connection is given up");
    assert!(c.agents.contains_key(&conn(11)));
}
