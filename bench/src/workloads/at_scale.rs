//! W16: 1M and then 10M tasks submitted at once, each size on a fresh cluster with a driver
//! process of its own: the rate at 10M against 1M, and each process's peak memory per task.

use std::time::Instant;

use serde_json::json;

use super::Better;
use super::{Measured, noop, wait, warm_up};
use crate::Result;
use crate::procs::{Cluster, Proc};
use crate::stats::median;
use crate::usage;

/// W16's sizes: the rate and memory at the larger one are compared with the smaller one's.
const W16_SIZES: [u64; 2] = [1_000_000, 10_000_000];

/// Other sizes for W16, `SMALL,LARGE` (the bench's own test runs it small).
const W16_SIZES_ENV: &str = "BLITZEN_BENCH_W16_SIZES";

fn w16_sizes() -> Result<[u64; 2]> {
    let Ok(text) = std::env::var(W16_SIZES_ENV) else { return Ok(W16_SIZES) };
    let sizes: Vec<u64> = text.split(',').filter_map(|n| n.trim().parse().ok()).collect();
    match sizes[..] {
        [small, large] if 0 < small && small <= large => Ok([small, large]),
        _ => Err(format!("{W16_SIZES_ENV}=`{text}` is not `SMALL,LARGE` task counts")),
    }
}

/// Results fetched per call while the driver collects W16's tasks (in submission order).
const W16_FETCH: usize = 100_000;

/// One W16 run of one size: a fresh cluster (server, one agent of two workers) and a driver of
/// its own, so that each process's peak memory is this run's.
struct AtScale {
    tasks_per_s: f64,
    /// Peak resident memory above the process's start, per task.
    driver_bytes_per_task: f64,
    server_bytes_per_task: f64,
}

fn at_scale_once(tasks: u64) -> Result<AtScale> {
    let cluster = Cluster::start(1, 2)?;
    let mut driver = Proc::driver(&cluster.addr, tasks)?;
    let driver_base: f64 = driver.report()?.parse().map_err(|_| "driver: no base memory")?;
    let server_base = usage::rss_bytes(cluster.server.pid())? as f64;
    driver.go()?;
    let done = driver.report()?;
    let mut fields = done.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(seconds)), Some(Ok(driver_peak))) = (fields.next(), fields.next()) else {
        return Err(format!("driver: `{done}` is not `SECONDS PEAK_BYTES`"));
    };
    let server_peak = usage::peak_rss_bytes(cluster.server.pid())? as f64;
    let n = tasks as f64;
    Ok(AtScale {
        tasks_per_s: n / seconds,
        driver_bytes_per_task: (driver_peak - driver_base).max(0.0) / n,
        server_bytes_per_task: (server_peak - server_base).max(0.0) / n,
    })
}

/// 1M (small) and then 10M (large) no-op tasks submitted at once; the headline is the large
/// size's rate as a percentage of the small one's (no slowdown with size: 100 %). `params.tasks`
/// names the sizes.
pub(super) fn at_scale(runs: usize) -> Result<Measured> {
    let sizes = w16_sizes()?;
    let (mut small, mut large, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let a = at_scale_once(sizes[0])?;
        let b = at_scale_once(sizes[1])?;
        ratios.push(100.0 * b.tasks_per_s / a.tasks_per_s);
        small.push(a);
        large.push(b);
    }
    let of =
        |runs: &[AtScale], f: fn(&AtScale) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Ok(Measured {
        params: json!({ "tasks": sizes, "agents": 1, "workers_per_agent": 2,
                        "submitted": "all at once, then fetched in submission order" }),
        runs: ratios,
        units: "% of the small rate",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_small", of(&small, |r| r.tasks_per_s)),
            ("tasks_per_s_large", of(&large, |r| r.tasks_per_s)),
            ("driver_peak_b_per_task_small", of(&small, |r| r.driver_bytes_per_task)),
            ("driver_peak_b_per_task_large", of(&large, |r| r.driver_bytes_per_task)),
            ("server_peak_b_per_task_small", of(&small, |r| r.server_bytes_per_task)),
            ("server_peak_b_per_task_large", of(&large, |r| r.server_bytes_per_task)),
        ],
    })
}

/// W16's driver, in a process of its own (see [`Proc::driver`]): connects, says its resident
/// memory, waits for `go`, submits `tasks` no-op tasks at once, fetches every result in
/// submission order, checks each, and says the seconds that took and its peak memory.
pub fn drive(server: &str, tasks: u64, go: impl FnOnce() -> Result<()>) -> Result<String> {
    let d = blitzen::distributed::DistributedDispatcher::new(server);
    d.connect().map_err(|e| e.to_string())?;
    warm_up(&d)?;
    crate::procs::say(&usage::rss_bytes(std::process::id())?.to_string())?;
    go()?;
    let start = Instant::now();
    let ids: Vec<_> = (0..tasks).map(|i| d.run(noop, i)).collect();
    for (n, chunk) in ids.chunks(W16_FETCH).enumerate() {
        let out = wait(&d, chunk)?;
        let first = (n * W16_FETCH) as u64;
        if out.iter().enumerate().any(|(i, &x)| x != first + i as u64) {
            return Err("W16: a result is not its input".into());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(format!("{seconds} {}", usage::peak_rss_bytes(std::process::id())?))
}
