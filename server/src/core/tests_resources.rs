//! Unit tests of the core's placement by resources: tasks go only where their request fits,
//! hold it until their result, reserve an agent rather than starve, and wait with a reason when
//! no agent could ever fit them.

use super::tests::{agent, assigned, conn, core, done, driver, key, kind, submission, turn};
use super::tests_results::{Heard, heard};
use super::*;
use blitzen_protocol::{Capacity, Finished, Outcome, Request};
use blitzen_protocol::{Report, WorkerInfo};

fn request(cpus: u32, custom: &[(&str, u64)]) -> Request {
    Request {
        cpus,
        memory: None,
        custom: custom.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
    }
}

/// Submits tasks of `name` asking for `request`.
fn submit_asking(c: &mut Core, n: u64, name: &str, request: &Request, ids: std::ops::Range<u64>) {
    let index = c.drivers.get(&key(c, n)).map_or(0, |d| d.kinds.len() as u32);
    let tasks = ids.map(|id| submission(id, index)).collect();
    let kind = TaskKind { request: Some(request.clone()), ..kind(name) };
    c.on_event(Event::Submit { conn: conn(n), kinds: vec![kind], tasks });
}

/// An agent with `workers` workers offering `capacity`.
fn agent_with(
    c: &mut Core,
    n: u64,
    workers: u32,
    capacity: Capacity,
) -> mpsc::UnboundedReceiver<ToAgent> {
    let rx = agent(c, n, workers, &["t"]);
    if let Some(a) = c.agents.get_mut(&conn(n)) {
        a.usage = blitzen_protocol::Usage::new(&capacity);
        a.resources = capacity;
    }
    rx
}

fn gpus(n: u64) -> Capacity {
    Capacity { cpus: 4, memory: 1 << 34, custom: vec![("gpu".into(), n)] }
}

#[test]
fn tasks_with_a_request_go_only_where_it_fits_and_hold_it_until_their_result() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut with_gpu = agent_with(&mut c, 10, 4, gpus(1));
    let mut without = agent_with(&mut c, 11, 4, Capacity::new(4, 1 << 34));
    submit_asking(&mut c, 1, "t", &request(1, &[("gpu", 1)]), 0..3);
    turn(&mut c);
    let first = assigned(&mut with_gpu);
    assert_eq!(first.len(), 1, "one GPU, one task at a time");
    assert!(assigned(&mut without).is_empty(), "no GPU there");
    c.on_event(Event::AgentDone { conn: conn(10), results: done(&first), recovered: false });
    turn(&mut c);
    assert_eq!(assigned(&mut with_gpu).len(), 1, "the GPU is free again");
    assert!(assigned(&mut without).is_empty());
}

#[test]
fn an_agent_is_reserved_for_a_large_task_rather_than_fed_small_ones() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut a = agent_with(&mut c, 10, 2, Capacity::new(2, 1 << 34));
    submit(&mut c, 1, 0..6);
    submit_asking(&mut c, 1, "t", &request(2, &[]), 6..7);
    submit(&mut c, 1, 7..20);
    let mut order = Vec::new();
    for _ in 0..20 {
        let held_before = c.agents[&conn(10)].running.len();
        turn(&mut c);
        let keys = assigned(&mut a);
        if keys.is_empty() {
            break;
        }
        for (i, key) in keys.iter().enumerate() {
            order.push((c.tasks[key].id.get(), held_before + i));
        }
        c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
    }
    let ids: Vec<u64> = order.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>(), "in submission order, none passing the large one");
    let big = order.iter().find(|&&(id, _)| id == 6).map(|&(_, held)| held);
    assert_eq!(big, Some(0), "the large task went to an agent holding nothing else");
}

fn submit(c: &mut Core, n: u64, ids: std::ops::Range<u64>) {
    super::tests::submit(c, n, "t", ids);
}

#[test]
fn a_task_no_agent_could_ever_fit_waits_and_says_what_is_missing() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent_with(&mut c, 10, 2, gpus(1));
    submit_asking(&mut c, 1, "t", &request(8, &[("gpu", 2)]), 0..1);
    submit(&mut c, 1, 1..2);
    turn(&mut c);
    assert_eq!(assigned(&mut a).len(), 1, "the plain task runs; the large one waits");
    let Heard { notes, .. } = heard(&mut d);
    let reason = notes.first().map(|(_, r)| r.as_str()).unwrap_or_default();
    assert!(reason.contains("it asks for 8 CPUs of 4, gpu=2 of 1 on the largest, a10"), "{reason}");
    // An agent that could fit it joins: it runs there.
    let mut big = agent_with(
        &mut c,
        11,
        8,
        Capacity { cpus: 8, memory: 1 << 34, custom: vec![("gpu".into(), 2)] },
    );
    c.kinds_runnable("a11");
    turn(&mut c);
    assert_eq!(assigned(&mut big).len(), 1);
    assert!(c.stranded.is_empty(), "no longer stranded");
}

#[test]
fn a_reservation_ends_with_its_agent() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut a = agent_with(&mut c, 10, 2, Capacity::new(2, 1 << 34));
    submit(&mut c, 1, 0..2);
    turn(&mut c);
    assert_eq!(assigned(&mut a).len(), 2);
    submit_asking(&mut c, 1, "t", &request(2, &[]), 2..3);
    turn(&mut c);
    assert_eq!(c.reservations.len(), 1, "the agent waits for its tasks to drain");
    c.on_event(Event::AgentLeft { conn: conn(10), reason: "gone".into() });
    assert!(c.reservations.is_empty());
    let mut b = agent_with(&mut c, 11, 2, Capacity::new(2, 1 << 34));
    turn(&mut c);
    let keys = assigned(&mut b);
    let ids: Vec<u64> = keys.iter().map(|k| c.tasks[k].id.get()).collect();
    assert_eq!(ids, [0, 1], "the lost agent's tasks first, in order");
    c.on_event(Event::AgentDone { conn: conn(11), results: done(&keys), recovered: false });
    turn(&mut c);
    let keys = assigned(&mut b);
    assert_eq!(keys.iter().map(|k| c.tasks[k].id.get()).collect::<Vec<_>>(), [2]);
}

/// A labelled kind (the Python package's `python` task, labelled with its function) is shown
/// by its label in the failures and the status, counted by it, and runs on an agent that has
/// the task by its name.
#[test]
fn a_label_is_what_the_status_shows_and_counts() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut a = agent(&mut c, 10, 1, &["t"]);
    let index = c.drivers.get(&key(&c, 1)).map_or(0, |d| d.kinds.len() as u32);
    let kind = TaskKind { label: Some("__main__.f2".into()), ..kind("t") };
    let tasks = (0..2).map(|id| submission(id, index)).collect();
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind], tasks });
    turn(&mut c);
    let keys = assigned(&mut a);
    assert_eq!(keys.len(), 2, "the agent has `t`: the label is not part of what it runs");
    let failed = Finished::unstarted(Outcome::Returned { message: "no".into(), detail: None });
    let mut results = done(&keys[..1]);
    results.push(Report {
        id: keys[1],
        worker: Some(WorkerInfo { pid: 7, host: None, devices: Default::default() }),
        run: failed,
    });
    c.on_event(Event::AgentDone { conn: conn(10), results, recovered: false });
    turn(&mut c);
    let status = c.status();
    assert_eq!(status.recent_failures[0].task, "__main__.f2");
    let counts: Vec<_> = status.tasks.iter().map(|t| (t.task.as_str(), t.done, t.failed)).collect();
    assert_eq!(counts, [("__main__.f2", 1, 1)]);
}
