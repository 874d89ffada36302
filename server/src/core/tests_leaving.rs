//! Agents that leave by themselves: one that says it is leaving gets nothing more and is told so
//! after what was already sent; one with a time limit gets no task expected to outlast it; and
//! what an autoscaler is told of the demand.

use std::time::Duration;

use super::tests::{
    agent, assigned, conn, core, done, driver, join, joining, kind, submission, submit, turn,
};
use super::*;
use blitzen_protocol::Capacity;
use blitzen_protocol::cluster::Submission;
use blitzen_protocol::resources::Request;

/// An agent of one worker for kind `t` that stops in `ends_in`, in `allocation`.
fn timed_agent(
    c: &mut Core,
    n: u64,
    ends_in: Duration,
    allocation: &str,
) -> mpsc::UnboundedReceiver<ToAgent> {
    let announced = joining(n, 1, &["t"]);
    join(c, n, JoiningAgent { ends_in: Some(ends_in), allocation: allocation.into(), ..announced })
}

fn released(rx: &mut mpsc::UnboundedReceiver<ToAgent>) -> (Vec<TaskKey>, bool) {
    let (mut keys, mut released) = (Vec::new(), false);
    while let Ok(message) = rx.try_recv() {
        match message {
            ToAgent::Run(batch) => {
                assert!(!released, "a task after the release");
                keys.extend(batch.into_iter().map(|a| a.key));
            }
            ToAgent::Released => released = true,
            _ => {}
        }
    }
    (keys, released)
}

#[test]
fn a_leaving_agent_gets_nothing_more_and_is_released() {
    let mut c = core(ServerConfig::default());
    let mut d = driver(&mut c, 1);
    let mut a = agent(&mut c, 2, 1, &["t"]);
    submit(&mut c, 1, "t", 0..10);
    turn(&mut c);
    let first = assigned(&mut a);
    assert_eq!(first.len(), 2, "two per worker");
    c.on_event(Event::AgentLeaving { conn: conn(2), reason: "idle".into() });
    c.on_event(Event::AgentDone { conn: conn(2), results: done(&first), recovered: false });
    turn(&mut c);
    let (more, was_released) = released(&mut a);
    assert!(more.is_empty(), "a leaving agent got {more:?}");
    assert!(was_released, "the agent was not told that nothing follows");
    // Its departure is no loss: the rest waits for another agent, nothing ended.
    c.on_event(Event::AgentLeft { conn: conn(2), reason: "connection closed".into() });
    turn(&mut c);
    let got = super::tests::outcomes(&mut d);
    assert_eq!(got.len(), 2, "{got:?}");
    let mut b = agent(&mut c, 3, 8, &["t"]);
    turn(&mut c);
    assert_eq!(assigned(&mut b).len(), 8);
}

#[test]
fn an_agent_near_its_time_limit_gets_only_tasks_that_end_before_it() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    let mut a = timed_agent(&mut c, 2, Duration::from_secs(10), "17");
    // Timeouts of 60 s (outlasting it) first, then of 5 s.
    let long = (0..3).map(|id| Submission { timeout_ms: Some(60_000), ..submission(id, 0) });
    let short = (3..6).map(|id| Submission { timeout_ms: Some(5_000), ..submission(id, 0) });
    c.on_event(Event::Submit {
        conn: conn(1),
        kinds: vec![kind("t")],
        tasks: long.chain(short).collect(),
    });
    turn(&mut c);
    assert!(assigned(&mut a).is_empty(), "60 s tasks went to an agent with 10 s left");
    // An agent without a limit takes the long ones; then the short ones can go to the first.
    let mut b = agent(&mut c, 3, 3, &["t"]);
    turn(&mut c);
    assert_eq!(assigned(&mut b).len(), 6, "the long ones, and the short behind them");
    let mut c2 = core(ServerConfig::default());
    let _d = driver(&mut c2, 1);
    let mut a = timed_agent(&mut c2, 2, Duration::from_secs(10), "17");
    let short = (0..2).map(|id| Submission { timeout_ms: Some(5_000), ..submission(id, 0) });
    c2.on_event(Event::Submit { conn: conn(1), kinds: vec![kind("t")], tasks: short.collect() });
    turn(&mut c2);
    assert_eq!(assigned(&mut a).len(), 1, "one 5 s task fits in 10 s, not a second behind it");
    // Without a timeout, how long its kind took elsewhere decides.
    let mut c3 = core(ServerConfig::default());
    let _d = driver(&mut c3, 1);
    let mut b = agent(&mut c3, 3, 1, &["t"]);
    submit(&mut c3, 1, "t", 0..1);
    turn(&mut c3);
    let ran = assigned(&mut b);
    let mut slow = done(&ran);
    slow[0].run.elapsed_us = 30_000_000;
    c3.on_event(Event::AgentDone { conn: conn(3), results: slow, recovered: false });
    c3.on_event(Event::AgentLeaving { conn: conn(3), reason: "idle".into() });
    submit(&mut c3, 1, "t", 1..3);
    let mut a = timed_agent(&mut c3, 4, Duration::from_secs(10), "18");
    turn(&mut c3);
    assert!(assigned(&mut a).is_empty(), "30 s tasks went to an agent with 10 s left");
}

#[test]
fn a_time_limit_past_any_clock_is_no_limit() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    // An agent may say anything: u64::MAX milliseconds must not overflow the server's clock.
    let mut a = timed_agent(&mut c, 2, Duration::from_millis(u64::MAX), "1");
    let long = (0..2).map(|id| Submission { timeout_ms: Some(3_600_000), ..submission(id, 0) });
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![kind("t")], tasks: long.collect() });
    turn(&mut c);
    assert_eq!(assigned(&mut a).len(), 2, "hour-long tasks go to an agent without a limit");
}

#[test]
fn the_demand_counts_ready_tasks_that_fit_the_shape() {
    let mut c = core(ServerConfig::default());
    let _d = driver(&mut c, 1);
    submit(&mut c, 1, "t", 0..5);
    let big = TaskKind { request: Some(Request { cpus: 16, ..Request::PLAIN }), ..kind("t") };
    let tasks = (5..7).map(|id| submission(id, 1)).collect();
    c.on_event(Event::Submit { conn: conn(1), kinds: vec![big], tasks });
    turn(&mut c);
    let shape = Capacity::new(4, u64::MAX);
    let demand = c.demand(&shape);
    assert_eq!((demand.ready, demand.too_big), (5, 2));
    assert!(demand.agents.is_empty());
    let mut a = timed_agent(&mut c, 2, Duration::from_secs(600), "42");
    turn(&mut c);
    assert_eq!(assigned(&mut a).len(), 2);
    let demand = c.demand(&shape);
    assert_eq!(demand.ready, 3, "what an agent holds is not ready");
    let view = &demand.agents[0];
    assert_eq!((view.allocation.as_str(), view.busy, view.leaving), ("42", true, false));
}

#[test]
fn resuming_autoscaling_reaches_the_autoscaler_or_says_there_is_none() {
    use blitzen_protocol::cluster::{FromObserver, ToObserver};
    let mut c = core(ServerConfig::default());
    let refused = c.observe(FromObserver::ResumeAutoscaling);
    assert!(
        matches!(&refused, ToObserver::Error(e) if e.contains("does not autoscale")),
        "{refused:?}"
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    c.autoscaler(tx);
    let answer = c.observe(FromObserver::ResumeAutoscaling);
    assert_eq!(answer, ToObserver::Resumed { was_paused: None });
    assert_eq!(rx.try_recv(), Ok(()), "the autoscaler heard it");
}
