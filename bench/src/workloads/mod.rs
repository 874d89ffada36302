//! The workloads. Each one sets up what it needs (a dispatcher, or a cluster of child
//! processes), warms it up, then times `runs` repetitions; set-up and tear-down are not timed
//! unless start-up is what is measured (W8).

use std::time::{Duration, Instant};

use blitzen::{Backend, Blob, Dispatcher, Fetch, MulticoreDispatcher, Task, TaskId};
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use serde_json::{Value, json};

use crate::Path;
use crate::Result;
use crate::procs::{self, Cluster};
use crate::stats::{median, percentile};
use crate::usage;

mod at_scale;
mod awaits;
mod durable;
mod graphs;
mod idle;
mod many_agents;
mod priorities;
mod side_by_side;

use at_scale::at_scale;
pub use at_scale::drive;
use awaits::{async_latency, async_throughput, pending_futures};
use durable::{durable_queue, durable_throughput, restart_queued};
use graphs::{chain, shared, shared_wide, tree, tree_on_cluster};
use idle::{idle_cluster, idle_multicore, startup_cluster, startup_multicore};
use many_agents::many_agents;
pub use many_agents::simulate;
use priorities::priorities;
use side_by_side::{Compare, encrypted_vs_plain, watched_vs_unwatched};

/// The no-op task: an int in, the same int out.
#[blitzen::task]
fn noop(x: u64) -> u64 {
    x
}

/// Returns 1 MiB as a [`Blob`], the type for binary results (shared, not copied, on arrival).
#[blitzen::task]
fn mebibyte(seed: u64) -> Blob {
    Blob::from(vec![seed as u8; 1 << 20])
}

/// Returns 1 MiB as a `serde_bytes::ByteBuf`, which is copied out of the message on arrival.
#[blitzen::task]
fn mebibyte_buf(seed: u64) -> ByteBuf {
    ByteBuf::from(vec![seed as u8; 1 << 20])
}

/// Longest wait for any batch of results.
const PATIENCE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    W8,
    W9,
    W10,
    W11,
    W12,
    W13,
    W14,
    W15,
    W16,
    W17,
    W18,
    W19,
    W20,
    W21,
    W22,
    W23,
    W24,
}

impl Workload {
    pub const ALL: [Workload; 24] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::W6,
        Workload::W7,
        Workload::W8,
        Workload::W9,
        Workload::W10,
        Workload::W11,
        Workload::W12,
        Workload::W13,
        Workload::W14,
        Workload::W15,
        Workload::W16,
        Workload::W17,
        Workload::W18,
        Workload::W19,
        Workload::W20,
        Workload::W21,
        Workload::W22,
        Workload::W23,
        Workload::W24,
    ];

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 24] = [
            "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11", "W12", "W13",
            "W14", "W15", "W16", "W17", "W18", "W19", "W20", "W21", "W22", "W23", "W24",
        ];
        NAMES[self as usize]
    }

    /// W5, W6, the data directory's W9–W11, encryption's W12–W14 the dashboard's W15, the 10M tasks
    /// of W16 and the 1,000 agents of W17 are about the server and its connections: distributed
    /// only. The async face's W18–W20, the graphs' W21–W23 and the priorities' W24 run on both.
    pub fn runs_on(self, path: Path) -> bool {
        path == Path::Distributed
            || (self as usize) < 4
            || matches!(
                self,
                Workload::W7
                    | Workload::W8
                    | Workload::W18
                    | Workload::W19
                    | Workload::W20
                    | Workload::W21
                    | Workload::W22
                    | Workload::W23
                    | Workload::W24
            )
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not a workload: use W1 … W24"))
    }
}

/// What one workload measured on one path.
#[derive(Debug)]
pub struct Measured {
    /// What was run (task counts, workers, …).
    pub params: Value,
    /// The headline figure of each run.
    pub runs: Vec<f64>,
    pub units: &'static str,
    pub better: Better,
    /// Secondary figures, each the median over the runs.
    pub extra: Vec<(&'static str, f64)>,
}

pub fn measure(workload: Workload, path: Path, runs: u32) -> Result<Measured> {
    let runs = runs as usize;
    match (workload, path) {
        (Workload::W1, Path::Multicore) => on_multicore(2, |d| throughput_runs(d, runs)),
        (Workload::W1, Path::Distributed) => on_cluster(1, 2, |d| throughput_runs(d, runs)),
        (Workload::W2, Path::Multicore) => on_multicore(2, |d| latency(d, runs)),
        (Workload::W2, Path::Distributed) => on_cluster(1, 2, |d| latency(d, runs)),
        (Workload::W3, Path::Multicore) => on_multicore(4, |d| scaling(d, runs)),
        (Workload::W3, Path::Distributed) => on_cluster(1, 4, |d| scaling(d, runs)),
        (Workload::W4, Path::Multicore) => on_multicore(2, |d| payload(d, runs)),
        (Workload::W4, Path::Distributed) => on_cluster(1, 2, |d| payload(d, runs)),
        (Workload::W5, _) => queue_memory(runs),
        (Workload::W6, _) => fan_in(runs),
        (Workload::W7, Path::Multicore) => idle_multicore(runs),
        (Workload::W7, Path::Distributed) => idle_cluster(runs),
        (Workload::W8, Path::Multicore) => startup_multicore(runs),
        (Workload::W8, Path::Distributed) => startup_cluster(runs),
        (Workload::W9, _) => durable_throughput(runs),
        (Workload::W10, _) => durable_queue(runs),
        (Workload::W11, _) => restart_queued(runs),
        (Workload::W12, _) => encrypted_vs_plain(runs, Compare::Throughput),
        (Workload::W13, _) => encrypted_vs_plain(runs, Compare::Latency),
        (Workload::W14, _) => encrypted_vs_plain(runs, Compare::Payload),
        (Workload::W15, _) => watched_vs_unwatched(runs),
        (Workload::W16, _) => at_scale(runs),
        (Workload::W17, _) => many_agents(runs),
        (Workload::W18, Path::Multicore) => on_multicore(2, |d| async_throughput(d, runs)),
        (Workload::W18, Path::Distributed) => on_cluster(1, 2, |d| async_throughput(d, runs)),
        (Workload::W19, Path::Multicore) => on_multicore(2, |d| async_latency(d, runs)),
        (Workload::W19, Path::Distributed) => on_cluster(1, 2, |d| async_latency(d, runs)),
        (Workload::W20, path) => pending_futures(path, runs),
        (Workload::W21, Path::Multicore) => on_multicore(2, |d| chain(d, runs)),
        (Workload::W21, Path::Distributed) => on_cluster(1, 2, |d| chain(d, runs)),
        (Workload::W22, Path::Multicore) => on_multicore(2, |d| tree(d, runs)),
        (Workload::W22, Path::Distributed) => tree_on_cluster(runs),
        (Workload::W23, Path::Multicore) => on_multicore(2, |d| shared(d, runs)),
        (Workload::W23, Path::Distributed) => {
            let mut m = on_cluster(1, 2, |d| shared(d, runs))?;
            m.extra.extend(shared_wide(runs)?);
            Ok(m)
        }
        (Workload::W24, Path::Multicore) => on_multicore(2, |d| priorities(d, 2, runs, &|| Ok(()))),
        (Workload::W24, Path::Distributed) => on_cluster(1, 2, |d| {
            let accepted = || d.wait_accepted(PATIENCE).map_err(|e| e.to_string());
            priorities(d, 2, runs, &accepted)
        }),
    }
}

fn on_multicore(
    workers: usize,
    f: impl FnOnce(&MulticoreDispatcher) -> Result<Measured>,
) -> Result<Measured> {
    let d = MulticoreDispatcher::new(workers).map_err(|e| e.to_string())?;
    warm_up(&d)?;
    let mut m = f(&d)?;
    m.params["workers"] = json!(workers);
    Ok(m)
}

fn on_cluster(
    agents: usize,
    workers: usize,
    f: impl FnOnce(&blitzen::distributed::DistributedDispatcher) -> Result<Measured>,
) -> Result<Measured> {
    let cluster = Cluster::start(agents, workers)?;
    let d = cluster.dispatcher();
    warm_up(&d)?;
    let mut m = f(&d)?;
    m.params["agents"] = json!(agents);
    m.params["workers_per_agent"] = json!(workers);
    drop(d);
    drop(cluster);
    Ok(m)
}

/// Runs some tasks so that workers, connections and caches are up before timing.
pub(super) fn warm_up<B: Backend>(d: &Dispatcher<B>) -> Result<()> {
    let ids: Vec<_> = (0..2_000).map(|i| d.run(noop, i)).collect();
    wait(d, &ids)?;
    Ok(())
}

/// Waits for `ids` and checks that every task succeeded.
fn wait<B: Backend, O: DeserializeOwned>(d: &Dispatcher<B>, ids: &[TaskId<O>]) -> Result<Vec<O>> {
    let results =
        d.get_results_with(ids, Fetch::default().within(PATIENCE)).map_err(|e| e.to_string())?;
    results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
}

// ----- W1 -----

const W1_TASKS: u64 = 100_000;

/// Submits W1's tasks, waits for all, returns tasks per second.
fn throughput<B: Backend>(d: &Dispatcher<B>) -> Result<f64> {
    let start = Instant::now();
    let ids: Vec<_> = (0..W1_TASKS).map(|i| d.run(noop, i)).collect();
    let out = wait(d, &ids)?;
    let rate = W1_TASKS as f64 / start.elapsed().as_secs_f64();
    if out.iter().enumerate().any(|(i, &x)| x != i as u64) {
        return Err("W1: a result is not its input".into());
    }
    Ok(rate)
}

fn throughput_runs<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    Ok(Measured {
        params: json!({ "tasks": W1_TASKS }),
        runs: (0..runs).map(|_| throughput(d)).collect::<Result<_>>()?,
        units: "tasks/s",
        better: Better::Higher,
        extra: Vec::new(),
    })
}

// ----- W2 -----

const W2_TRIPS: u64 = 2_000;

fn latency<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..runs {
        floor.push(procs::wake_up_floor_us(W2_TRIPS as usize)?);
        let mut trips = Vec::with_capacity(W2_TRIPS as usize);
        for i in 0..W2_TRIPS {
            let start = Instant::now();
            let id = d.run(noop, i);
            wait(d, &[id])?;
            trips.push(start.elapsed().as_secs_f64() * 1e6);
        }
        trips.sort_by(f64::total_cmp);
        p50.push(percentile(&trips, 0.50));
        p99.push(percentile(&trips, 0.99));
    }
    Ok(Measured {
        params: json!({ "round_trips": W2_TRIPS }),
        runs: p50,
        units: "µs p50",
        better: Better::Lower,
        extra: vec![("p99_us", median(&p99)), ("process_round_trip_floor_us", median(&floor))],
    })
}

// ----- W3 -----

const W3_TASKS: usize = 40;
const W3_SLEEP: f64 = 0.1;

fn scaling<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let mut walls = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let ids: Vec<_> = (0..W3_TASKS).map(|_| d.run(blitzen::sleep, W3_SLEEP)).collect();
        wait(d, &ids)?;
        walls.push(start.elapsed().as_secs_f64());
    }
    Ok(Measured {
        params: json!({ "tasks": W3_TASKS, "sleep_s": W3_SLEEP, "ideal_s": 1.0 }),
        runs: walls,
        units: "s",
        better: Better::Lower,
        extra: Vec::new(),
    })
}

// ----- W4 -----

const W4_TASKS: u64 = 200;

/// MB/s of 1 MiB results; runs with `Blob` and with `ByteBuf` alternate.
fn payload<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let mut blobs = Vec::new();
    let mut bufs = Vec::new();
    for _ in 0..runs {
        blobs.push(payload_rate(d, mebibyte)?);
        bufs.push(payload_rate(d, mebibyte_buf)?);
    }
    Ok(Measured {
        params: json!({ "tasks": W4_TASKS, "result_bytes": 1 << 20, "result_type": "Blob" }),
        runs: blobs,
        units: "MB/s",
        better: Better::Higher,
        extra: vec![("byte_buf_mb_per_s", median(&bufs))],
    })
}

fn payload_rate<B: Backend, T>(d: &Dispatcher<B>, task: T) -> Result<f64>
where
    T: Task<Args = u64> + Copy,
    T::Output: AsRef<[u8]>,
{
    let start = Instant::now();
    let ids: Vec<_> = (0..W4_TASKS).map(|i| d.run(task, i)).collect();
    let out = wait(d, &ids)?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: usize = out.iter().map(|b| b.as_ref().len()).sum();
    if bytes != (W4_TASKS as usize) << 20 {
        return Err(format!("W4: received {bytes} bytes"));
    }
    Ok(bytes as f64 / secs / 1e6)
}

// ----- W5 -----

const W5_TASKS: u64 = 1_000_000;

/// A fresh server per run, no agent: how much its memory grows per queued task, and how fast
/// it takes submissions.
fn queue_memory(runs: usize) -> Result<Measured> {
    let mut per_task = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..runs {
        let cluster = Cluster::start(0, 0)?;
        let d = cluster.dispatcher();
        d.connect().map_err(|e| e.to_string())?;
        let before = usage::rss_bytes(cluster.server.pid())?;
        let start = Instant::now();
        for i in 0..W5_TASKS {
            let _ = d.run(noop, i);
        }
        d.wait_accepted(PATIENCE).map_err(|e| e.to_string())?;
        rates.push(W5_TASKS as f64 / start.elapsed().as_secs_f64());
        let after = usage::rss_bytes(cluster.server.pid())?;
        per_task.push(after.saturating_sub(before) as f64 / W5_TASKS as f64);
    }
    Ok(Measured {
        params: json!({ "tasks": W5_TASKS, "agents": 0 }),
        runs: per_task,
        units: "B/task",
        better: Better::Lower,
        extra: vec![("submits_per_s", median(&rates))],
    })
}

// ----- W6 -----

const W6_AGENTS: usize = 100;

/// W1 on 100 agents of one worker against W1 on one agent of two, run alternately so that both
/// see the same machine; the headline is the ratio of each pair.
fn fan_in(runs: usize) -> Result<Measured> {
    let one = Cluster::start(1, 2)?;
    let many = Cluster::start(W6_AGENTS, 1)?;
    let (d1, d100) = (one.dispatcher(), many.dispatcher());
    warm_up(&d1)?;
    warm_up(&d100)?;
    let (mut ones, mut manys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let a = throughput(&d1)?;
        let b = throughput(&d100)?;
        ones.push(a);
        manys.push(b);
        ratios.push(100.0 * b / a);
    }
    Ok(Measured {
        params: json!({ "tasks": W1_TASKS, "agents": W6_AGENTS, "workers_per_agent": 1,
                        "against": "1 agent of 2 workers" }),
        runs: ratios,
        units: "% of 1 agent",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_100_agents", median(&manys)),
            ("tasks_per_s_1_agent", median(&ones)),
        ],
    })
}

/// The workloads' own roles of a child process, by name: `None` for a role that is not theirs
/// (see [`procs::child_role`]).
pub fn role(name: &str) -> Option<Result<()>> {
    match name {
        "driver" => Some(driver()),
        "simagents" => Some(simulated_agents()),
        "awaiter" => Some(awaits::awaiter()),
        _ => None,
    }
}

/// W17's simulated agents (see [`simulate`]).
fn simulated_agents() -> Result<()> {
    simulate(&procs::setting(procs::SERVER)?, procs::number(procs::AGENTS)?)
}

/// W16's driver: its memory once connected, then, after `go` on stdin, its seconds and peak
/// memory (see [`drive`]).
fn driver() -> Result<()> {
    let server = procs::setting(procs::SERVER)?;
    let tasks: u64 = procs::number(procs::TASKS)?;
    let go = || {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("stdin: {e}"))?;
        if line.trim() == "go" {
            Ok(())
        } else {
            Err(format!("`{}`, not `go`, on stdin", line.trim()))
        }
    };
    let done = drive(&server, tasks, go)?;
    procs::say(&done)
}

/// Which way is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}
