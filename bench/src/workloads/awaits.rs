//! W18–W20: the async face against the blocking one, on one dispatcher, inside a current-thread
//! Tokio runtime as a small service would run it.
//!
//! W18 is W1 with its results taken from the completion stream (`completed`) instead of
//! `get_results`, W19 is W2 with `result(id).await` instead of `get_results(&[id])`; both run
//! alternately with their blocking twin so that both see the same machine. W20 holds 100,000
//! futures pending at once and reports what each costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use blitzen::{Backend, Dispatcher};
use serde_json::json;

use super::side_by_side::alternately;
use super::{Better, Measured, W1_TASKS, W2_TRIPS, latency, median, noop, percentile, throughput};
use crate::procs::{self, Cluster, Proc};
use crate::usage;
use crate::{Path, Result};

/// A current-thread runtime with timers.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// W18: W1 awaited, as a percentage of W1 blocking.
pub(super) fn async_throughput<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let rt = runtime()?;
    let awaited = || rt.block_on(throughput_awaited(d));
    let (awaited, blocking) = alternately(runs, awaited, || throughput(d))?;
    Ok(Measured {
        params: json!({ "tasks": W1_TASKS, "awaited": "completed(&ids), a current-thread runtime",
                        "against": "get_results(&ids)" }),
        runs: awaited.iter().zip(&blocking).map(|(a, b)| 100.0 * a / b).collect(),
        units: "% of blocking",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_awaited", median(&awaited)),
            ("tasks_per_s_blocking", median(&blocking)),
        ],
    })
}

/// Submits W1's tasks and awaits them as they complete; tasks per second.
async fn throughput_awaited<B: Backend>(d: &Dispatcher<B>) -> Result<f64> {
    let start = Instant::now();
    let ids: Vec<_> = (0..W1_TASKS).map(|i| d.run(noop, i)).collect();
    let mut completed = d.completed(&ids);
    let mut sum = 0u64;
    while let Some((_, r)) = completed.next().await {
        sum += r.map_err(|e| e.to_string())?;
    }
    let rate = W1_TASKS as f64 / start.elapsed().as_secs_f64();
    if sum != W1_TASKS * (W1_TASKS - 1) / 2 {
        return Err(format!("W18: the results sum to {sum}"));
    }
    Ok(rate)
}

/// W19: W2's p50 awaited minus W2's p50 blocking, in µs.
pub(super) fn async_latency<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let rt = runtime()?;
    let awaited = || rt.block_on(latency_awaited(d));
    let blocking = || latency(d, 1).map(|m| m.runs[0]);
    let (awaited, blocking) = alternately(runs, awaited, blocking)?;
    Ok(Measured {
        params: json!({ "round_trips": W2_TRIPS, "awaited": "result(id).await, a current-thread runtime",
                        "against": "get_results(&[id])" }),
        runs: awaited.iter().zip(&blocking).map(|(a, b)| a - b).collect(),
        units: "µs more",
        better: Better::Lower,
        extra: vec![("p50_us_awaited", median(&awaited)), ("p50_us_blocking", median(&blocking))],
    })
}

/// W2's round trips, each awaited; the p50 in µs.
async fn latency_awaited<B: Backend>(d: &Dispatcher<B>) -> Result<f64> {
    let mut trips = Vec::with_capacity(W2_TRIPS as usize);
    for i in 0..W2_TRIPS {
        let start = Instant::now();
        let out = d.result(d.run(noop, i)).await.map_err(|e| e.to_string())?;
        trips.push(start.elapsed().as_secs_f64() * 1e6);
        if out != i {
            return Err(format!("W19: {out} came back for {i}"));
        }
    }
    trips.sort_by(f64::total_cmp);
    Ok(percentile(&trips, 0.50))
}

const W20_FUTURES: u64 = 100_000;
/// How long the workers are kept busy while the futures are pending.
const W20_HOLD: f64 = 3.0;
const W20_WORKERS: usize = 2;

/// W20: 100,000 tasks awaited at once from a current-thread runtime, each await a Tokio task of
/// its own: resident memory per pending future (its Tokio task included), and the threads of the
/// process before and while they are pending. Each run is a fresh process (the `awaiter` role),
/// so that memory freed by one run is not reused by the next.
pub(super) fn pending_futures(path: Path, runs: usize) -> Result<Measured> {
    let cluster = match path {
        Path::Multicore => None,
        Path::Distributed => Some(Cluster::start(1, W20_WORKERS)?),
    };
    let env: Vec<_> = cluster.iter().map(|c| (procs::SERVER, c.addr.clone())).collect();
    let (mut per_future, mut threads_before, mut threads_during) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let mut awaiter = Proc::awaiter(&env)?;
        let line = awaiter.report()?;
        let figures: Vec<f64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
        let [bytes, before, during] = figures[..] else {
            return Err(format!("W20: the awaiter said `{line}`"));
        };
        per_future.push(bytes);
        threads_before.push(before);
        threads_during.push(during);
    }
    Ok(Measured {
        params: json!({ "futures": W20_FUTURES, "runtime": "current-thread",
                        "each": "a Tokio task awaiting result(id)", "workers": W20_WORKERS }),
        runs: per_future,
        units: "B per pending future",
        better: Better::Lower,
        extra: vec![
            ("threads_before", median(&threads_before)),
            ("threads_while_pending", median(&threads_during)),
        ],
    })
}

/// W20's `awaiter` role: a dispatcher of its own (a multicore one, or a driver of the server in
/// `SERVER`), one measurement, said as `bytes-per-future threads-before threads-during`.
pub(super) fn awaiter() -> Result<()> {
    let (bytes, before, during) = match std::env::var(procs::SERVER) {
        Ok(addr) => pending_once(blitzen::distributed::DistributedDispatcher::new(&addr))?,
        Err(_) => pending_once(
            blitzen::MulticoreDispatcher::new(W20_WORKERS).map_err(|e| e.to_string())?,
        )?,
    };
    procs::say(&format!("{bytes} {before} {during}"))
}

/// The tasks queue behind one long task per worker, so every future is pending when measured.
fn pending_once<B: Backend + 'static>(d: Dispatcher<B>) -> Result<(f64, usize, usize)> {
    super::warm_up(&d)?;
    let d = Arc::new(d);
    let me = std::process::id();
    let rt = runtime()?;
    let holds: Vec<_> = (0..W20_WORKERS).map(|_| d.run(blitzen::sleep, W20_HOLD)).collect();
    let ids: Vec<_> = (0..W20_FUTURES).map(|i| d.run(noop, i)).collect();
    let threads_before = threads()?;
    let rss_before = usage::rss_bytes(me)?;
    let (rss, threads_during) = rt.block_on(async {
        let polled = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for (i, id) in ids.into_iter().enumerate() {
            let (d, polled) = (d.clone(), polled.clone());
            set.spawn(async move {
                polled.fetch_add(1, Ordering::Relaxed);
                (i as u64, d.result(id).await)
            });
        }
        // Every future has been polled once, and waits, when the counter is full: each
        // counts itself just before its first poll of `result`, which registers its waker.
        while polled.load(Ordering::Relaxed) < W20_FUTURES as usize {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        let pending = d.pending();
        let measured = (usage::rss_bytes(me), threads());
        let mut wrong = 0u64;
        while let Some(joined) = set.join_next().await {
            if !matches!(joined, Ok((i, Ok(v))) if v == i) {
                wrong += 1;
            }
        }
        if wrong > 0 {
            return Err(format!("W20: {wrong} awaits came back wrong"));
        }
        if pending < W20_FUTURES as usize {
            return Err(format!("W20: {pending} tasks pending when measured, not all"));
        }
        Ok((measured.0?, measured.1?))
    })?;
    let slept = rt.block_on(d.results(&holds)).map_err(|e| e.to_string())?;
    if slept.iter().any(|r| r.is_err()) {
        return Err(format!("W20: a long task failed: {slept:?}"));
    }
    if rss <= rss_before {
        return Err("W20: memory did not grow with 100,000 pending futures".into());
    }
    Ok(((rss - rss_before) as f64 / W20_FUTURES as f64, threads_before, threads_during))
}

/// Threads of this process.
fn threads() -> Result<usize> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no Threads line in /proc/self/status".to_string())
}
