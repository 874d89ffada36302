//! The workloads. Each one sets up what it needs (a dispatcher, or a cluster of child
//! processes), warms it up, then times `runs` repetitions; set-up and tear-down are not timed
//! unless start-up is what is measured (W8).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blitzen::{Backend, Blob, Dispatcher, Fetch, MulticoreDispatcher, Task, TaskId};
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use serde_json::{Value, json};

use crate::Path;
use crate::procs::{self, Cluster, Proc, Result};
use crate::report::Better;

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
}

impl Workload {
    pub const ALL: [Workload; 16] = [
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
    ];

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11", "W12", "W13",
            "W14", "W15", "W16",
        ];
        NAMES[self as usize]
    }

    /// W5, W6, the data directory's W9–W11, encryption's W12–W14 the dashboard's W15 and the 10M tasks
    /// of W16 are about the server and its connections: distributed only.
    pub fn runs_on(self, path: Path) -> bool {
        path == Path::Distributed
            || (self as usize) < 4
            || matches!(self, Workload::W7 | Workload::W8)
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not a workload: use W1 … W16"))
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
fn warm_up<B: Backend>(d: &Dispatcher<B>) -> Result<()> {
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
    for _ in 0..runs {
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
        extra: vec![("p99_us", median(&p99))],
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
        let before = procs::rss_bytes(cluster.server.pid())?;
        let start = Instant::now();
        for i in 0..W5_TASKS {
            let _ = d.run(noop, i);
        }
        d.wait_accepted(PATIENCE).map_err(|e| e.to_string())?;
        rates.push(W5_TASKS as f64 / start.elapsed().as_secs_f64());
        let after = procs::rss_bytes(cluster.server.pid())?;
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

// ----- W7 -----

const W7_IDLE: Duration = Duration::from_secs(5);

/// CPU time used by `pids` (and, for `parents`, their children) over [`W7_IDLE`], in ms.
fn idle_cpu_ms(groups: &[(&'static str, Vec<u32>)]) -> Result<Vec<(&'static str, f64)>> {
    let before: Vec<u64> = groups.iter().map(|(_, pids)| total_cpu(pids)).collect::<Result<_>>()?;
    std::thread::sleep(W7_IDLE);
    let after: Vec<u64> = groups.iter().map(|(_, pids)| total_cpu(pids)).collect::<Result<_>>()?;
    Ok(groups
        .iter()
        .zip(before.iter().zip(after))
        .map(|((name, _), (b, a))| (*name, a.saturating_sub(*b) as f64 / 1e6))
        .collect())
}

fn total_cpu(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| procs::cpu_ns(p)).sum()
}

fn idle_multicore(runs: usize) -> Result<Measured> {
    let d = MulticoreDispatcher::new(2).map_err(|e| e.to_string())?;
    warm_up(&d)?;
    let me = std::process::id();
    let workers = procs::children(me)?;
    if workers.len() != 2 {
        return Err(format!("W7: expected 2 worker processes, found {workers:?}"));
    }
    let groups = [("dispatcher_ms", vec![me]), ("workers_ms", workers)];
    idle_runs(&groups, runs, json!({ "idle_s": W7_IDLE.as_secs(), "workers": 2 }))
}

fn idle_cluster(runs: usize) -> Result<Measured> {
    let cluster = Cluster::start(1, 2)?;
    let d = cluster.dispatcher();
    warm_up(&d)?;
    let agent = cluster.agents[0].pid();
    let workers = procs::children(agent)?;
    if workers.len() != 2 {
        return Err(format!("W7: expected 2 worker processes, found {workers:?}"));
    }
    let groups = [
        ("server_ms", vec![cluster.server.pid()]),
        ("agent_ms", vec![agent]),
        ("workers_ms", workers),
    ];
    let params = json!({ "idle_s": W7_IDLE.as_secs(), "agents": 1, "workers_per_agent": 2,
                         "driver": "connected, not counted" });
    idle_runs(&groups, runs, params)
}

fn idle_runs(groups: &[(&'static str, Vec<u32>)], runs: usize, params: Value) -> Result<Measured> {
    let mut totals = Vec::new();
    let mut parts: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    for _ in 0..runs {
        let used = idle_cpu_ms(groups)?;
        totals.push(used.iter().map(|(_, ms)| ms).sum());
        for (part, (_, ms)) in parts.iter_mut().zip(used) {
            part.push(ms);
        }
    }
    Ok(Measured {
        params,
        runs: totals,
        units: "ms CPU",
        better: Better::Lower,
        extra: groups.iter().zip(&parts).map(|((name, _), v)| (*name, median(v))).collect(),
    })
}

// ----- W8 -----

/// From nothing to the first result: a new dispatcher with two workers.
fn startup_multicore(runs: usize) -> Result<Measured> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let d = MulticoreDispatcher::new(2).map_err(|e| e.to_string())?;
        let id = d.run(noop, 1);
        wait(&d, &[id])?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        d.shutdown();
    }
    Ok(Measured {
        params: json!({ "workers": 2 }),
        runs: times,
        units: "ms",
        better: Better::Lower,
        extra: Vec::new(),
    })
}

/// From nothing to the first result: a server process, an agent process with two workers, and
/// a driver that connects and runs one task (which waits on the server until the agent is in).
fn startup_cluster(runs: usize) -> Result<Measured> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let (server, addr) = Proc::server()?;
        let agent = Proc::agent(&addr, 2)?;
        let d = blitzen::distributed::DistributedDispatcher::new(&addr);
        let id = d.run(noop, 1);
        wait(&d, &[id])?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(d);
        drop(agent);
        drop(server);
    }
    Ok(Measured {
        params: json!({ "agents": 1, "workers_per_agent": 2, "processes": "server, agent, driver" }),
        runs: times,
        units: "ms",
        better: Better::Lower,
        extra: Vec::new(),
    })
}

// ----- W9–W11: the data directory -----

/// A data directory for one workload, removed when dropped.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new(label: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("blitzen-bench-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }

    /// Bytes the directory's files take.
    fn size(&self) -> Result<u64> {
        let entries = std::fs::read_dir(&self.0).map_err(|e| e.to_string())?;
        let mut total = 0;
        for entry in entries {
            total += entry.and_then(|e| e.metadata()).map_err(|e| e.to_string())?.len();
        }
        Ok(total)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tasks that have run and been fetched on W9's durable server before its file is measured.
const W9_FILE_TASKS: u64 = 1_000_000;

/// W1 with a data directory against W1 in memory, run alternately so that both see the same
/// machine; the headline is the ratio of each pair. Then W1 again until a million tasks have run
/// and been fetched on the durable server, and the size of its file.
fn durable_throughput(runs: usize) -> Result<Measured> {
    let dir = DataDir::new("w9")?;
    let memory = Cluster::start(1, 2)?;
    let durable = Cluster::start_in(Some(&dir.0), 1, 2)?;
    let (dm, dd) = (memory.dispatcher(), durable.dispatcher());
    warm_up(&dm)?;
    warm_up(&dd)?;
    let (mut plain, mut saved, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let a = throughput(&dm)?;
        let b = throughput(&dd)?;
        plain.push(a);
        saved.push(b);
        ratios.push(100.0 * b / a);
    }
    let mut done = 2_000 + runs as u64 * W1_TASKS;
    while done < W9_FILE_TASKS {
        throughput(&dd)?;
        done += W1_TASKS;
    }
    let file_mb = dir.size()? as f64 / 1e6;
    Ok(Measured {
        params: json!({ "tasks": W1_TASKS, "agents": 1, "workers_per_agent": 2,
                        "against": "the same without a data directory",
                        "file_after_tasks": done }),
        runs: ratios,
        units: "% of memory",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_durable", median(&saved)),
            ("tasks_per_s_memory", median(&plain)),
            ("file_mb_after", file_mb),
        ],
    })
}

/// Submits W5's million tasks to a server with no agent under `session`, and waits until it
/// has taken (and, with a data directory, saved) them all; returns the first task and the rate.
fn fill_queue(cluster: &Cluster, session: &str) -> Result<(TaskId<u64>, f64)> {
    let d = cluster.dispatcher().with_session(session);
    d.connect().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let first = d.run(noop, 0);
    for i in 1..W5_TASKS {
        let _ = d.run(noop, i);
    }
    d.wait_accepted(PATIENCE).map_err(|e| e.to_string())?;
    let rate = W5_TASKS as f64 / start.elapsed().as_secs_f64();
    d.detach();
    Ok((first, rate))
}

/// W5 with a data directory: a fresh server per run, no agent; how fast it takes submissions
/// that are saved before they are accepted, and the bytes on disk and in memory per task.
fn durable_queue(runs: usize) -> Result<Measured> {
    let (mut rates, mut disk, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = DataDir::new("w10")?;
        let empty = dir.size()?;
        let cluster = Cluster::start_in(Some(&dir.0), 0, 0)?;
        let before = procs::rss_bytes(cluster.server.pid())?;
        let (_, rate) = fill_queue(&cluster, "w10")?;
        let after = procs::rss_bytes(cluster.server.pid())?;
        rates.push(rate);
        disk.push(dir.size()?.saturating_sub(empty) as f64 / W5_TASKS as f64);
        memory.push(after.saturating_sub(before) as f64 / W5_TASKS as f64);
    }
    Ok(Measured {
        params: json!({ "tasks": W5_TASKS, "agents": 0 }),
        runs: rates,
        units: "submits/s",
        better: Better::Higher,
        extra: vec![
            ("disk_bytes_per_task", median(&disk)),
            ("rss_bytes_per_task", median(&memory)),
        ],
    })
}

/// A server restarted on a directory holding a million queued tasks: from its launch until a
/// driver attached to their session has the first one's result (the server loads the
/// directory, listens, an agent starts and joins, the first task is dispatched and runs).
/// Each run starts from a copy of the same directory.
fn restart_queued(runs: usize) -> Result<Measured> {
    let filled = DataDir::new("w11-filled")?;
    let first = {
        let cluster = Cluster::start_in(Some(&filled.0), 0, 0)?;
        fill_queue(&cluster, "w11")?.0
        // Dropped: the server stops cleanly.
    };
    let (mut firsts, mut listens) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = DataDir::new("w11")?;
        for entry in std::fs::read_dir(&filled.0).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            std::fs::copy(entry.path(), dir.0.join(entry.file_name()))
                .map_err(|e| e.to_string())?;
        }
        let start = Instant::now();
        let (server, addr) = Proc::server_in(Some(&dir.0))?;
        listens.push(start.elapsed().as_secs_f64() * 1e3);
        let agent = Proc::agent(&addr, 2)?;
        let d = blitzen::distributed::DistributedDispatcher::attach(&addr, "w11")
            .map_err(|e| e.to_string())?;
        let value = wait(&d, &[first])?;
        firsts.push(start.elapsed().as_secs_f64() * 1e3);
        if value != [0] {
            return Err(format!("W11: the first task returned {value:?}"));
        }
        d.detach();
        drop(agent);
        drop(server);
    }
    Ok(Measured {
        params: json!({ "queued": W5_TASKS, "agents": 1, "workers_per_agent": 2 }),
        runs: firsts,
        units: "ms",
        better: Better::Lower,
        extra: vec![("listening_ms", median(&listens))],
    })
}

// ----- W12–W14: encryption -----

/// What W12–W14 compare.
#[derive(Debug, Clone, Copy)]
enum Compare {
    /// W1's tasks/s.
    Throughput,
    /// W2's p50 round trip.
    Latency,
    /// W4's MB/s with `Blob` results.
    Payload,
}

/// W1, W2 or W4 on two clusters with the same secret, one encrypted (TLS 1.3, the default) and
/// one with encryption turned off, run alternately (each first in every other run) so that both
/// see the same machine. The
/// headline is encrypted as a percentage of plain (W12, W14) or the difference in µs (W13).
fn encrypted_vs_plain(runs: usize, compare: Compare) -> Result<Measured> {
    use crate::procs::Security;
    let tls = Cluster::start_secured(1, 2, Security::Encrypted)?;
    let plain = Cluster::start_secured(1, 2, Security::Plaintext)?;
    let (dt, dp) = (tls.dispatcher(), plain.dispatcher());
    warm_up(&dt)?;
    warm_up(&dp)?;
    let measure = |d: &blitzen::distributed::DistributedDispatcher| -> Result<f64> {
        match compare {
            Compare::Throughput => throughput(d),
            Compare::Latency => latency(d, 1).map(|m| m.runs[0]),
            Compare::Payload => payload_rate(d, mebibyte),
        }
    };
    let (encrypted, clear) = alternately(runs, || measure(&dt), || measure(&dp))?;
    let headline = (encrypted.iter().zip(&clear))
        .map(|(e, p)| match compare {
            Compare::Latency => e - p,
            _ => 100.0 * e / p,
        })
        .collect();
    let (of, units, better, names) = match compare {
        Compare::Throughput => {
            ("W1", "% of plain", Better::Higher, ("tasks_per_s_encrypted", "tasks_per_s_plain"))
        }
        Compare::Latency => ("W2", "µs more", Better::Lower, ("p50_us_encrypted", "p50_us_plain")),
        Compare::Payload => {
            ("W4", "% of plain", Better::Higher, ("mb_per_s_encrypted", "mb_per_s_plain"))
        }
    };
    Ok(Measured {
        params: json!({ "workload": of, "agents": 1, "workers_per_agent": 2,
                        "encrypted": "TLS 1.3 (AES-GCM, ring)",
                        "against": "the same secret, --insecure-plaintext" }),
        runs: headline,
        units,
        better,
        extra: vec![(names.0, median(&encrypted)), (names.1, median(&clear))],
    })
}

/// Measures `a` and `b` `runs` times each, each going first in every other run so that
/// neither profits from going second; their figures, in run order.
fn alternately(
    runs: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        if run % 2 == 0 {
            of_a.push(a()?);
            of_b.push(b()?);
        } else {
            of_b.push(b()?);
            of_a.push(a()?);
        }
    }
    Ok((of_a, of_b))
}

// ----- W15: the dashboard -----

/// Follows a dashboard's event stream like a browser would, until `stop`; returns the bytes
/// it read.
fn subscribe(addr: &str, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<u64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("dashboard: {e}"))?;
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .map_err(|e| format!("dashboard: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let (mut total, mut buf) = (0u64, vec![0u8; 64 * 1024]);
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        total
    }))
}

/// W1 on two clusters, one serving its dashboard with a client following its event stream,
/// one without, run alternately; the headline is the watched one's tasks/s as a percentage
/// of the other's.
fn watched_vs_unwatched(runs: usize) -> Result<Measured> {
    let watched = Cluster::start_watched(1, 2)?;
    let plain = Cluster::start(1, 2)?;
    let (dw, dp) = (watched.dispatcher(), plain.dispatcher());
    warm_up(&dw)?;
    warm_up(&dp)?;
    let stop = Arc::new(AtomicBool::new(false));
    let dashboard = watched.dashboard.as_deref().ok_or("the server serves no dashboard")?;
    let follower = subscribe(dashboard, stop.clone())?;
    let (with, without) = alternately(runs, || throughput(&dw), || throughput(&dp))?;
    let headline = with.iter().zip(&without).map(|(w, p)| 100.0 * w / p).collect();
    stop.store(true, Ordering::Relaxed);
    let streamed = follower.join().map_err(|_| "the dashboard follower panicked")?;
    if streamed == 0 {
        return Err("the dashboard's event stream sent nothing".into());
    }
    Ok(Measured {
        params: json!({ "workload": "W1", "agents": 1, "workers_per_agent": 2,
                        "watched": "the server's dashboard, one client following /api/events" }),
        runs: headline,
        units: "% of unwatched",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_watched", median(&with)),
            ("tasks_per_s_unwatched", median(&without)),
            ("event_stream_bytes", streamed as f64),
        ],
    })
}

// ----- W16: 10M tasks at once -----

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
    let server_base = procs::rss_bytes(cluster.server.pid())? as f64;
    driver.go()?;
    let done = driver.report()?;
    let mut fields = done.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(seconds)), Some(Ok(driver_peak))) = (fields.next(), fields.next()) else {
        return Err(format!("driver: `{done}` is not `SECONDS PEAK_BYTES`"));
    };
    let server_peak = procs::peak_rss_bytes(cluster.server.pid())? as f64;
    let n = tasks as f64;
    Ok(AtScale {
        tasks_per_s: n / seconds,
        driver_bytes_per_task: (driver_peak - driver_base).max(0.0) / n,
        server_bytes_per_task: (server_peak - server_base).max(0.0) / n,
    })
}

/// 1M and then 10M no-op tasks submitted at once; the headline is the rate at 10M as a
/// percentage of the rate at 1M (no slowdown with size: 100 %).
fn at_scale(runs: usize) -> Result<Measured> {
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
        units: "% of the 1M rate",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_1m", of(&small, |r| r.tasks_per_s)),
            ("tasks_per_s_10m", of(&large, |r| r.tasks_per_s)),
            ("driver_peak_b_per_task_1m", of(&small, |r| r.driver_bytes_per_task)),
            ("driver_peak_b_per_task_10m", of(&large, |r| r.driver_bytes_per_task)),
            ("server_peak_b_per_task_1m", of(&small, |r| r.server_bytes_per_task)),
            ("server_peak_b_per_task_10m", of(&large, |r| r.server_bytes_per_task)),
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
    crate::procs::say(&procs::rss_bytes(std::process::id())?.to_string())?;
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
    Ok(format!("{seconds} {}", procs::peak_rss_bytes(std::process::id())?))
}

// ----- statistics -----

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The value at fraction `q` of sorted `values` (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
