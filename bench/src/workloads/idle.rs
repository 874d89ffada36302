//! W7 and W8: what an idle dispatcher costs (CPU over five idle seconds) and how long a start
//! takes (launch to first result), on both paths.

use std::time::{Duration, Instant};

use blitzen::MulticoreDispatcher;
use serde_json::{Value, json};

use super::{Better, Measured, median, noop, wait, warm_up};
use crate::Result;
use crate::procs::{Cluster, Proc};
use crate::usage;

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
    pids.iter().map(|&p| usage::cpu_ns(p)).sum()
}

pub(super) fn idle_multicore(runs: usize) -> Result<Measured> {
    let d = MulticoreDispatcher::new(2).map_err(|e| e.to_string())?;
    warm_up(&d)?;
    let me = std::process::id();
    let workers = usage::children(me)?;
    if workers.len() != 2 {
        return Err(format!("W7: expected 2 worker processes, found {workers:?}"));
    }
    let groups = [("dispatcher_ms", vec![me]), ("workers_ms", workers)];
    idle_runs(&groups, runs, json!({ "idle_s": W7_IDLE.as_secs(), "workers": 2 }))
}

pub(super) fn idle_cluster(runs: usize) -> Result<Measured> {
    let cluster = Cluster::start(1, 2)?;
    let d = cluster.dispatcher();
    warm_up(&d)?;
    let agent = cluster.agents[0].pid();
    let workers = usage::children(agent)?;
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
pub(super) fn startup_multicore(runs: usize) -> Result<Measured> {
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
pub(super) fn startup_cluster(runs: usize) -> Result<Measured> {
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
