//! W9–W11: the cluster with a data directory — durable throughput, durable submits, and a
//! restart on a directory of queued tasks.

use std::time::Instant;

use blitzen::TaskId;
use serde_json::json;

use super::Better;
use super::{Measured, PATIENCE, W1_TASKS, W5_TASKS, noop, throughput, wait, warm_up};
use crate::Result;
use crate::procs::{Cluster, Proc};
use crate::stats::median;
use crate::usage;

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
pub(super) fn durable_throughput(runs: usize) -> Result<Measured> {
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
pub(super) fn durable_queue(runs: usize) -> Result<Measured> {
    let (mut rates, mut disk, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = DataDir::new("w10")?;
        let empty = dir.size()?;
        let cluster = Cluster::start_in(Some(&dir.0), 0, 0)?;
        let before = usage::rss_bytes(cluster.server.pid())?;
        let (_, rate) = fill_queue(&cluster, "w10")?;
        let after = usage::rss_bytes(cluster.server.pid())?;
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
pub(super) fn restart_queued(runs: usize) -> Result<Measured> {
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
