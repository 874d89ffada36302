//! Unit tests of tasks waiting for others: released with their inputs spliced, failed at once
//! with every descendant, met by a result still held, cancelled with their dependents, and
//! waiting again after a restart.

use super::tests::{agent, conn, core, driver, kind, outcomes, submission, turn};
use super::*;
use blitzen_protocol::cluster::Submission;
use blitzen_protocol::inputs::{Framing, InputPart, Inputs};
use blitzen_protocol::{Finished, Outcome, WorkerInfo};
use bytes::Bytes;

fn encode(v: u64) -> Bytes {
    Bytes::from(rmp_serde::to_vec(&v).expect("encodes"))
}

/// Task `id` (of the first kind declared) whose arguments are the results of `on`, in order.
fn taking(id: u64, on: &[u64]) -> Submission {
    let parts = on.iter().map(|&p| InputPart::Result(DriverTaskId::new(p))).collect();
    let framing = if on.len() == 1 { Framing::Single } else { Framing::Array };
    let inputs = Inputs { framing, parts, after: Vec::new() };
    Submission { inputs: Some(Box::new(inputs)), ..submission(id, 0) }
}

fn submit(c: &mut Core, tasks: Vec<Submission>) {
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind("t")], tasks });
}

/// What agent `rx` was handed: each task's driver id and arguments.
fn handed(c: &Core, rx: &mut mpsc::UnboundedReceiver<ToAgent>) -> Vec<(TaskKey, u64, Bytes)> {
    let mut got = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let ToAgent::Run(batch) = msg {
            for a in batch {
                got.push((a.key, c.tasks[&a.key].id.get(), a.args));
            }
        }
    }
    got
}

/// The agent's results: each task's value.
fn finish(c: &mut Core, values: &[(TaskKey, Outcome)]) {
    let results = (values.iter())
        .map(|(key, outcome)| Report {
            id: *key,
            worker: Some(WorkerInfo { pid: 1, host: None, devices: Default::default() }),
            run: Finished::unstarted(outcome.clone()),
        })
        .collect();
    c.on_event(Event::AgentDone { conn: conn(10), results, recovered: false });
    turn(c);
}

#[test]
fn a_diamond_runs_each_task_once_its_inputs_are_in_with_them_spliced() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 4, &["t"]);
    submit(&mut c, vec![submission(1, 0), taking(2, &[1]), taking(3, &[1]), taking(4, &[2, 3])]);
    turn(&mut c);
    let first = handed(&c, &mut a);
    assert_eq!(first.iter().map(|t| t.1).collect::<Vec<_>>(), [1], "only the root is queued");
    assert_eq!((c.status().server.waiting, c.status().server.queued), (3, 0));
    finish(&mut c, &[(first[0].0, Outcome::Value(encode(5)))]);
    let middle = handed(&c, &mut a);
    let ids: Vec<(u64, Bytes)> = middle.iter().map(|t| (t.1, t.2.clone())).collect();
    assert_eq!(ids, [(2, encode(5)), (3, encode(5))], "each gets the root's value");
    finish(&mut c, &[(middle[0].0, Outcome::Value(encode(6)))]);
    assert!(handed(&c, &mut a).is_empty(), "the join waits for both");
    finish(&mut c, &[(middle[1].0, Outcome::Value(encode(7)))]);
    let last = handed(&c, &mut a);
    let want = Bytes::from(rmp_serde::to_vec(&(6u64, 7u64)).expect("encodes"));
    assert_eq!(last.iter().map(|t| (t.1, t.2.clone())).collect::<Vec<_>>(), [(4, want)]);
    // The results others took wait a moment for company on their way to the driver.
    assert!(outcomes(&mut d).is_empty(), "held back a moment");
    std::thread::sleep(super::drivers::INPUT_RESULTS_DELAY);
    turn(&mut c);
    let mut heard: Vec<u64> = outcomes(&mut d).into_iter().map(|(id, _)| id).collect();
    heard.sort_unstable();
    assert_eq!(heard, [1, 2, 3], "the driver hears every result once");
    assert_eq!(c.status().server.waiting, 0);
}

#[test]
fn a_failed_root_fails_every_descendant_at_once_naming_it() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 4, &["t"]);
    let after = Inputs {
        framing: Framing::Single,
        parts: vec![InputPart::Value(encode(1))],
        after: vec![(DriverTaskId::new(3), false)],
    };
    let ordered = Submission { inputs: Some(Box::new(after)), ..submission(4, 0) };
    submit(&mut c, vec![submission(1, 0), taking(2, &[1]), taking(3, &[2]), ordered]);
    turn(&mut c);
    let root = handed(&c, &mut a);
    let _ = outcomes(&mut d);
    let crash = Outcome::Returned { message: "boom".into(), detail: None };
    finish(&mut c, &[(root[0].0, crash)]);
    assert!(handed(&c, &mut a).is_empty(), "nothing else runs");
    let got = outcomes(&mut d);
    assert_eq!(got.len(), 4, "{got:?}");
    for (id, outcome) in &got[1..] {
        let Outcome::DependencyFailed { task, name, outcome } = outcome else {
            panic!("task {id}: {outcome:?}")
        };
        assert_eq!((*task, name.as_str()), (1, "t"));
        assert!(matches!(&**outcome, Outcome::Returned { message, .. } if message == "boom"));
    }
    assert_eq!((c.tasks.len(), c.status().server.waiting), (0, 0));
}

#[test]
fn a_result_still_held_meets_a_wait_at_once_and_after_any_takes_a_failure() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 4, &["t"]);
    submit(&mut c, vec![submission(1, 0), submission(2, 0)]);
    turn(&mut c);
    let roots = handed(&c, &mut a);
    let lost = Outcome::Lost { reason: "gone".into() };
    finish(&mut c, &[(roots[0].0, Outcome::Value(encode(9))), (roots[1].0, lost)]);
    assert_eq!(outcomes(&mut d).len(), 2);
    // Not acknowledged yet: the server holds both results.
    let any = Inputs {
        framing: Framing::Single,
        parts: vec![InputPart::Result(DriverTaskId::new(1))],
        after: vec![(DriverTaskId::new(2), true)],
    };
    submit(&mut c, vec![Submission { inputs: Some(Box::new(any)), ..submission(3, 0) }]);
    turn(&mut c);
    let got = handed(&c, &mut a);
    assert_eq!(got.iter().map(|t| (t.1, t.2.clone())).collect::<Vec<_>>(), [(3, encode(9))]);
}

#[test]
fn cancelling_a_task_cancels_those_waiting_on_it() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    // No agent: the root stays queued.
    submit(&mut c, vec![submission(1, 0), taking(2, &[1]), taking(3, &[2])]);
    turn(&mut c);
    let _ = outcomes(&mut d);
    c.on_event(Event::Cancel { conn: conn(1), ids: vec![DriverTaskId::new(1)] });
    turn(&mut c);
    let got = outcomes(&mut d);
    let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(ids.len(), 3, "{got:?}");
    for (id, outcome) in got {
        match (id, outcome) {
            (1, Outcome::Cancelled { .. }) => {}
            (2 | 3, Outcome::DependencyFailed { task: 1, outcome, .. }) => {
                assert!(matches!(*outcome, Outcome::Cancelled { .. }));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(c.tasks.is_empty());
}

#[test]
fn after_a_restart_a_waiting_task_waits_again_and_a_held_result_meets_it() {
    use crate::store::{Loaded, SessionRecord, TaskRecord};
    let record = |seq: u64, inputs: Option<Inputs>| TaskRecord {
        kind: 0,
        args: Bytes::new(),
        timeout_ms: None,
        retries: 0,
        unrunnable_limit_ms: 0,
        seq,
        inputs: inputs.map(Box::new),
        attempts: 0,
    };
    let waiting = |on: &[u64]| {
        let parts = on.iter().map(|&p| InputPart::Result(DriverTaskId::new(p))).collect();
        Some(Inputs { framing: Framing::Array, parts, after: Vec::new() })
    };
    let held = Report::unstarted(DriverTaskId::new(1), Outcome::Value(encode(3)));
    let loaded = Loaded {
        sessions: vec![("s1".into(), SessionRecord { name: "d1".into(), accepted: 4, next_id: 5 })],
        tasks: vec![
            // Task 1 ended (its result held); 2 is queued; 3 waits on both; 4 on one gone.
            ("s1".to_string(), 2, record(11, None)),
            ("s1".to_string(), 3, record(12, waiting(&[1, 2]))),
            ("s1".to_string(), 4, record(13, waiting(&[0]))),
        ],
        results: vec![("s1".to_string(), held)],
        kinds: vec![kind("t")],
        next_seq: 14,
        ..Loaded::default()
    };
    let (batches, _saved) = std::sync::mpsc::channel();
    let mut c =
        Core::new(ServerConfig::default(), mpsc::unbounded_channel().1, Some((batches, loaded)));
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 4, &["t"]);
    turn(&mut c);
    let first = handed(&c, &mut a);
    assert_eq!(first.iter().map(|t| t.1).collect::<Vec<_>>(), [2]);
    let got = outcomes(&mut d);
    assert!(
        got.iter().any(|(id, o)| *id == 4 && matches!(o, Outcome::Lost { .. })),
        "a task waiting on what no longer exists ends, it does not hang: {got:?}"
    );
    finish(&mut c, &[(first[0].0, Outcome::Value(encode(4)))]);
    let last = handed(&c, &mut a);
    let want = Bytes::from(rmp_serde::to_vec(&(3u64, 4u64)).expect("encodes"));
    assert_eq!(last.iter().map(|t| (t.1, t.2.clone())).collect::<Vec<_>>(), [(3, want)]);
}

#[test]
fn a_wait_on_a_task_never_submitted_is_refused_not_held() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    submit(&mut c, vec![submission(1, 0), taking(2, &[50])]);
    turn(&mut c);
    let got = outcomes(&mut d);
    let [(2, Outcome::BadArguments { message })] = &got[..] else { panic!("{got:?}") };
    assert!(message.contains("task 50"), "{message}");
    assert_eq!(c.status().server.waiting, 0);
}
