//! Unit tests of shared values: stored once, sent to each agent once before the first task that
//! takes it, kept within the agent's cache size without evicting what its tasks take, forgotten
//! once unshared and untaken, refused when unknown, and restored from the data directory.

use super::tests::{conn, core, driver, join, joining, kind, outcomes, submission, turn};
use super::*;
use blitzen_protocol::cluster::{SharePiece, Submission};
use blitzen_protocol::inputs::{Framing, InputPart, Inputs};
use blitzen_protocol::{Finished, Outcome, WorkerInfo};
use bytes::Bytes;

/// Driver 1 shares value `id`, of `len` bytes, in pieces.
fn share(c: &mut Core, id: u64, len: usize) {
    let bytes = Bytes::from(vec![7u8; len]);
    for piece in SharePiece::split(id, &bytes) {
        c.on_event(Event::Share { conn: conn(1), piece });
    }
}

/// Task `id` of driver 1 taking shared value `value` as its one argument.
fn taking(id: u64, value: u64) -> Submission {
    let inputs =
        Inputs { framing: Framing::Single, parts: vec![InputPart::Shared(value)], after: vec![] };
    Submission { inputs: Some(Box::new(inputs)), ..submission(id, 0) }
}

fn submit(c: &mut Core, tasks: Vec<Submission>) {
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind("t")], tasks });
}

/// An agent with a cache of `cache_size` bytes.
fn agent(c: &mut Core, n: u64, cache_size: u64) -> mpsc::UnboundedReceiver<ToAgent> {
    join(c, n, JoiningAgent { cache_size, ..joining(n, 2, &["t"]) })
}

/// What an agent was sent, in order: `S key` (a piece of a value), `F keys` (forget), `R key`
/// (a task, with the keys it takes).
fn sent(rx: &mut mpsc::UnboundedReceiver<ToAgent>) -> (Vec<String>, Vec<TaskKey>) {
    let (mut said, mut keys) = (Vec::new(), Vec::new());
    while let Ok(msg) = rx.try_recv() {
        match msg {
            ToAgent::Share(p) if p.offset == 0 => said.push(format!("S{}", p.id)),
            ToAgent::Unshare(ks) => said.push(format!("F{ks:?}")),
            ToAgent::Run(batch) => {
                for a in batch {
                    let shared: Vec<u64> = a.inputs.iter().flat_map(|i| i.shared()).collect();
                    said.push(format!("R{shared:?}"));
                    keys.push(a.key);
                }
            }
            _ => {}
        }
    }
    (said, keys)
}

fn finish(c: &mut Core, n: u64, keys: &[TaskKey]) {
    let results = (keys.iter())
        .map(|&key| Report {
            id: key,
            worker: Some(WorkerInfo { pid: 1, host: None, devices: Default::default() }),
            run: Finished::unstarted(Outcome::Value(Bytes::from_static(b"\x01"))),
        })
        .collect();
    c.on_event(Event::AgentDone { conn: conn(n), results, recovered: false });
    turn(c);
}

#[test]
fn a_value_goes_to_each_agent_once_before_its_first_task_and_goes_when_unshared() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    // Small enough that tasks go to whichever agent has room (see the locality test).
    share(&mut c, 5, 512 << 10);
    assert_eq!(c.status().server.shared_values, 1, "held once all its pieces are in");
    let mut a = agent(&mut c, 10, 0);
    submit(&mut c, vec![taking(1, 5), taking(2, 5)]);
    turn(&mut c);
    let (said, keys) = sent(&mut a);
    assert_eq!(said, ["S1", "R[1]", "R[1]"], "the value once, before the tasks");
    let mut b = agent(&mut c, 11, 0);
    submit(&mut c, vec![taking(3, 5), taking(4, 5), taking(5, 5)]);
    turn(&mut c);
    let ((to_a, more), (to_b, b_keys)) = (sent(&mut a), sent(&mut b));
    assert!(to_a.iter().all(|s| s == "R[1]"), "not again to the same agent: {to_a:?}");
    assert_eq!(to_b.first().map(String::as_str), Some("S1"), "another agent gets it first");
    assert_eq!(to_b.iter().filter(|s| *s == "S1").count(), 1, "once: {to_b:?}");
    assert_eq!(more.len() + b_keys.len(), 3);
    assert_eq!(c.status().server.shared_bytes_sent, 2 * (512 << 10));
    // Unshared while tasks take it: kept until they end.
    c.on_event(Event::Unshare { conn: conn(1), ids: vec![5] });
    turn(&mut c);
    assert_eq!(c.status().server.shared_values, 1);
    let a_keys: Vec<TaskKey> = keys.into_iter().chain(more).collect();
    finish(&mut c, 10, &a_keys);
    assert_eq!(c.status().server.shared_values, 1, "agent b's tasks still take it");
    finish(&mut c, 11, &b_keys);
    assert_eq!(c.status().server.shared_values, 0, "gone once untaken");
    assert_eq!(sent(&mut a).0, ["F[1]"], "the agents forget it");
    assert_eq!(outcomes(&mut d).len(), 5);
}

#[test]
fn tasks_taking_a_large_value_keep_to_the_agent_that_has_it_while_it_has_room() {
    // The dispatch looks at agents in a hash map's order, which differs from core to core:
    // enough cores that both orders come up (each is one in two).
    for _ in 0..16 {
        keep_to_the_agent_that_has_it();
    }
}

fn keep_to_the_agent_that_has_it() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    // Two pieces, and large enough to prefer the agents that hold it.
    share(&mut c, 5, 20 << 20);
    let mut a = agent(&mut c, 10, 0);
    submit(&mut c, vec![taking(1, 5)]);
    turn(&mut c);
    assert_eq!(sent(&mut a).0, ["S1", "R[1]"]);
    let mut b = agent(&mut c, 11, 0);
    // Agent a has room for three more (two workers, credit for four): they wait for it
    // rather than bring the value to b, whichever agent the dispatch looks at first.
    submit(&mut c, (2..=4).map(|id| taking(id, 5)).collect());
    turn(&mut c);
    turn(&mut c);
    assert_eq!(sent(&mut a).0, ["R[1]", "R[1]", "R[1]"]);
    assert!(sent(&mut b).0.is_empty(), "b has no room to spare a's");
    // With a full, b takes the next ones, and gets the value first.
    submit(&mut c, vec![taking(5, 5), taking(6, 5)]);
    turn(&mut c);
    turn(&mut c);
    assert_eq!(sent(&mut b).0, ["S1", "R[1]", "R[1]"]);
    assert_eq!(c.status().server.shared_bytes_sent, 2 * (20 << 20));
}

#[test]
fn a_full_cache_forgets_the_least_recently_used_value_no_task_takes() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    for id in 1..=3 {
        share(&mut c, id, 1000);
    }
    // Room for two values.
    let mut a = agent(&mut c, 10, 2500);
    submit(&mut c, vec![taking(1, 1)]);
    turn(&mut c);
    let (_, first) = sent(&mut a);
    submit(&mut c, vec![taking(2, 2)]);
    turn(&mut c);
    let (_, second) = sent(&mut a);
    finish(&mut c, 10, &first);
    // Value 1 is the least recently used and no task takes it; value 2's task still runs.
    submit(&mut c, vec![taking(3, 3)]);
    turn(&mut c);
    assert_eq!(sent(&mut a).0, ["F[1]", "S3", "R[3]"]);
    assert_eq!(c.status().agents[0].cache_used, 2000);
    finish(&mut c, 10, &second);
}

#[test]
fn a_task_taking_a_value_not_held_or_larger_than_every_cache_is_refused_saying_so() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    submit(&mut c, vec![taking(1, 9)]);
    turn(&mut c);
    let got = outcomes(&mut d);
    let [(1, Outcome::BadArguments { message })] = &got[..] else { panic!("{got:?}") };
    assert!(message.contains("shared value 9, which the server does not hold"), "{message}");
    // A file is the agents' to name, never a driver's.
    let file = Inputs {
        framing: Framing::Single,
        parts: vec![InputPart::File("/etc/passwd".into())],
        after: vec![],
    };
    submit(&mut c, vec![Submission { inputs: Some(Box::new(file)), ..submission(5, 0) }]);
    turn(&mut c);
    let got = outcomes(&mut d);
    let [(5, Outcome::BadArguments { message })] = &got[..] else { panic!("{got:?}") };
    assert!(message.contains("name a file"), "{message}");
    // 2,000 bytes for agents that keep 1,000 and 1,500.
    share(&mut c, 4, 2000);
    let _a = agent(&mut c, 10, 1000);
    let _b = agent(&mut c, 11, 1500);
    submit(&mut c, vec![taking(2, 4)]);
    turn(&mut c);
    let got = outcomes(&mut d);
    let [(2, Outcome::BadArguments { message })] = &got[..] else { panic!("{got:?}") };
    assert!(message.contains("the largest holds 1500 bytes"), "{message}");
    assert!(c.tasks.is_empty());
    // An agent with room for it: taken.
    let _big = agent(&mut c, 12, 4000);
    submit(&mut c, vec![taking(3, 4)]);
    turn(&mut c);
    assert!(outcomes(&mut d).is_empty(), "taken");
    assert_eq!(c.tasks.len(), 1);
}

#[test]
fn after_a_restart_a_task_takes_its_shared_value_from_the_data_directory() {
    use crate::store::{Loaded, SessionRecord, SharedRecord, TaskRecord};
    let inputs =
        Inputs { framing: Framing::Single, parts: vec![InputPart::Shared(40)], after: vec![] };
    let record = TaskRecord {
        kind: 0,
        args: Bytes::new(),
        timeout_ms: None,
        retries: 0,
        unrunnable_limit_ms: 0,
        seq: 3,
        inputs: Some(Box::new(inputs)),
        attempts: 0,
    };
    let shared = SharedRecord { key: 40, bytes: Bytes::from_static(b"weights") };
    let loaded = Loaded {
        sessions: vec![("s1".into(), SessionRecord { name: "d1".into(), accepted: 1, next_id: 2 })],
        tasks: vec![("s1".to_string(), 1, record)],
        shares: vec![("s1".to_string(), 7, shared)],
        kinds: vec![kind("t")],
        next_seq: 4,
        ..Loaded::default()
    };
    let (batches, saved) = std::sync::mpsc::channel();
    let mut c =
        Core::new(ServerConfig::default(), mpsc::unbounded_channel().1, Some((batches, loaded)));
    let _d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 0);
    turn(&mut c);
    assert_eq!(sent(&mut a).0, ["S40", "R[40]"]);
    // A new value gets a key above every key restored.
    share(&mut c, 8, 10);
    submit(&mut c, vec![taking(2, 8)]);
    turn(&mut c);
    // The task goes out once it is saved.
    assert_eq!(sent(&mut a).0, ["S41"]);
    let batch = std::iter::from_fn(|| saved.try_recv().ok()).map(|(b, _)| b).max();
    c.on_event(Event::Committed { batch: batch.expect("a batch") });
    turn(&mut c);
    assert_eq!(sent(&mut a).0, ["R[41]"]);
}
