//! W24: priorities. An urgent task (priority 10) submitted behind 100,000 queued tasks of
//! priority 0, each of 10 ms: how long until it starts, against one task's duration. And a task
//! of priority 0 under a constant stream of priority-`P` tasks (10 by default): how long until
//! it starts, against the documented bound of `P` × `blitzen_protocol::priority::AGE_STEP`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blitzen::{Backend, Dispatcher, Fetch, RunOptions};
use blitzen_protocol::priority::AGE_STEP;
use serde_json::json;

use super::{Better, Measured, PATIENCE, wait};
use crate::Result;

/// Waits until the queue is where the order is decided: a cluster's server has every task.
pub(super) type Accepted<'a> = dyn Fn() -> Result<()> + 'a;

/// Each task's run time.
const TASK: Duration = Duration::from_millis(10);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How long task `id` waited before it started: from `submitted` to its result, less its run.
fn waited<B: Backend>(
    d: &Dispatcher<B>,
    id: blitzen::TaskId<f64>,
    submitted: Instant,
) -> Result<f64> {
    let mut results = d
        .get_task_results(&[id.untyped()], Fetch::default().within(PATIENCE))
        .map_err(|e| e.to_string())?;
    let total = submitted.elapsed();
    let result = results.pop().ok_or("W24: no result")?;
    if !result.is_ok() {
        return Err(format!("W24: {result:?}"));
    }
    Ok(total.saturating_sub(result.run.elapsed()).as_secs_f64())
}

/// The urgent task behind the queue: seconds until it started. The queue is cancelled after.
fn urgent<B: Backend>(d: &Dispatcher<B>, queued: u64, accepted: &Accepted) -> Result<f64> {
    let seconds = TASK.as_secs_f64();
    let queue: Vec<_> = (0..queued).map(|_| d.run(blitzen::sleep, seconds)).collect();
    // Queued where the order is decided (a cluster's server), not still on its way there.
    accepted()?;
    let submitted = Instant::now();
    let id = d.run_with(blitzen::sleep, seconds, RunOptions::default().with_priority(10));
    let waited = waited(d, id, submitted)?;
    d.cancel_many(&queue).map_err(|e| e.to_string())?;
    // Cancelled or done: every result is fetched, so the next run starts empty.
    let _ = d.get_results_with(&queue, Fetch::default().within(PATIENCE));
    Ok(waited)
}

/// The low task under a stream of priority-`high` tasks, kept queued until it has started:
/// seconds until it started.
fn under_stream<B: Backend>(d: &Dispatcher<B>, high: i32, workers: u64) -> Result<f64> {
    let seconds = TASK.as_secs_f64();
    let options = RunOptions::default().with_priority(high);
    // Enough work queued that the stream never runs dry: a chunk is half a second of it.
    let chunk = (workers * 50).max(1);
    let mut chunks = std::collections::VecDeque::new();
    for _ in 0..3 {
        chunks.push_back(
            (0..chunk).map(|_| d.run_with(blitzen::sleep, seconds, options)).collect::<Vec<_>>(),
        );
    }
    let submitted = Instant::now();
    let low = d.run(blitzen::sleep, seconds);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let waited = waited(d, low, submitted);
            done.store(true, Ordering::SeqCst);
            waited
        });
        let mut fed = Ok(());
        // Fed until the low task started, or well past its bound (it would wait for ever
        // without aging: then the stream ends, and the figure shows it).
        let give_up =
            Duration::from_secs_f64(3.0 * f64::from(high.max(1)) * AGE_STEP.as_secs_f64() + 10.0);
        while !done.load(Ordering::SeqCst) && submitted.elapsed() < give_up {
            let Some(oldest) = chunks.pop_front() else { break };
            if let Err(e) = wait(d, &oldest) {
                fed = Err(e);
                break;
            }
            chunks.push_back(
                (0..chunk).map(|_| d.run_with(blitzen::sleep, seconds, options)).collect(),
            );
        }
        for rest in chunks.drain(..) {
            let _ = wait(d, &rest);
        }
        let waited = waiter.join().map_err(|_| "W24: the waiting thread panicked".to_string())?;
        fed.and(waited)
    })
}

pub(super) fn priorities<B: Backend>(
    d: &Dispatcher<B>,
    workers: u64,
    runs: usize,
    accepted: &Accepted,
) -> Result<Measured> {
    let queued = setting("BLITZEN_BENCH_W24_QUEUED", 100_000);
    let high = setting("BLITZEN_BENCH_W24_STREAM_PRIORITY", 10) as i32;
    let mut urgent_s = Vec::new();
    let mut low_s = Vec::new();
    for _ in 0..runs {
        urgent_s.push(urgent(d, queued, accepted)?);
        low_s.push(under_stream(d, high, workers)?);
    }
    let bound = f64::from(high) * AGE_STEP.as_secs_f64();
    let urgent = super::median(&urgent_s);
    Ok(Measured {
        params: json!({
            "queued": queued,
            "task_ms": TASK.as_millis() as u64,
            "stream_priority": high,
            "documented_bound_s": bound,
        }),
        runs: urgent_s.iter().map(|s| s * 1e3).collect(),
        units: "ms until the urgent task starts",
        better: Better::Lower,
        extra: vec![
            ("urgent_in_task_durations", urgent / TASK.as_secs_f64()),
            ("low_under_stream_s", super::median(&low_s)),
            ("low_of_bound", super::median(&low_s) / bound),
        ],
    })
}
