//! W17: 1,000 agents and 100 drivers on one server. The agents are simulated — processes of
//! this program each holding many real agent connections that answer every task at once,
//! without worker processes — so that the server, not the agents, is what is measured.
//!
//! Reported: tasks/s with 1,000 agents as a percentage of the rate with 10 (the headline), the
//! server's CPU per task, its resident memory per idle agent, the p99 time from a task's
//! submission to its arrival at an agent, and the time until the server has noticed 100
//! agents killed at once (`kill -9` of one process of 100).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blitzen::Task;
use blitzen::distributed::DistributedDispatcher;
use blitzen_net::PeerTls;
use blitzen_protocol::Report;
use blitzen_protocol::cluster::{FromAgent, FromObserver, Role, TaskKind, ToAgent, ToObserver};
use blitzen_protocol::{Finished, Outcome, WorkerInfo};
use serde_json::json;

use super::Better;
use super::{Measured, noop, wait};
use crate::Result;
use crate::procs::{Proc, say};
use crate::stats::{median, percentile};
use crate::usage;

/// Agents per simulating process: killing one kills this many at once.
const PER_PROCESS: usize = 100;
/// Drivers, each a connection of its own from this process.
const DRIVERS: usize = 100;
/// Tasks each driver runs per phase.
const TASKS_PER_DRIVER: u64 = 1_000;

/// Agents for W17's two phases and tasks per driver, `FEW,MANY,TASKS` (the bench's own test
/// runs it small).
const W17_SIZES_ENV: &str = "BLITZEN_BENCH_W17_SIZES";

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The role of a simulating process: `agents` connections to `server`, each announcing the
/// no-op task and answering every assignment at once with its argument. Says `ready` once all
/// are connected; on `go`, says the p99 of the delays it saw from submission to arrival, in µs.
pub fn simulate(server: &str, agents: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    runtime.block_on(async {
        let mut connected = Vec::new();
        for i in 0..agents {
            let role = Role::Agent {
                host: format!("sim-{}-{i}", std::process::id()),
                workers: 1,
                tasks: vec![TaskKind {
                    name: <noop as Task>::NAME.into(),
                    fingerprint: <noop as Task>::FINGERPRINT,
                    signature: <noop as Task>::SIGNATURE.into(),
                    request: None,
                    label: None,
                    stream: false,
                    priority: 0,
                }],
                heartbeat_ms: 5_000,
                agent_id: (u64::from(std::process::id()) << 20) | i as u64 | 1 << 63,
                replaces: 0,
                capacity: None,
                cache_size: 0,
                ends_in_ms: 0,
                allocation: String::new(),
            };
            let limit = Duration::from_secs(30);
            let admitted = blitzen_net::connect(server, role, None, &PeerTls::default(), limit)
                .await
                .map_err(|e| format!("agent {i}: {e}"))?;
            connected.push(tokio::spawn(answer(admitted, delays.clone())));
        }
        say("ready")?;
        // `go` on stdin: the load is over.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("stdin: {e}"))?;
        let mut seen = delays.lock().unwrap_or_else(PoisonError::into_inner).clone();
        seen.sort_by(f64::total_cmp);
        let p99 = if seen.is_empty() { 0.0 } else { percentile(&seen, 0.99) };
        say(&format!("{p99} {}", seen.len()))?;
        // Until the bench closes stdin (or kills this process).
        tokio::task::spawn_blocking(|| {
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("stdin: {e}"))?;
        Ok(())
    })
}

/// One simulated agent: every task back at once, a heartbeat when idle.
async fn answer(
    admitted: blitzen_net::Admitted<blitzen_protocol::cluster::Welcome>,
    delays: Arc<Mutex<Vec<f64>>>,
) {
    let (mut reader, write) = (admitted.reader, admitted.write);
    let (tx, _writer) = blitzen_net::spawn_writer::<FromAgent>(write);
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            msg = reader.next::<ToAgent>() => match msg {
                Ok(Some(ToAgent::Run(tasks))) => {
                    let now = now_us();
                    let mut seen = Vec::with_capacity(tasks.len());
                    let results = tasks
                        .into_iter()
                        .map(|a| {
                            if let Ok(sent) = rmp_serde::from_slice::<u64>(&a.args) {
                                seen.push(now.saturating_sub(sent) as f64);
                            }
                            let mut run = Finished::unstarted(Outcome::Value(a.args));
                            run.elapsed_us = 1;
                            Report { id: a.key, worker: Some(WorkerInfo { pid: 1, host: None, devices: Default::default() }), run }
                        })
                        .collect();
                    delays.lock().unwrap_or_else(PoisonError::into_inner).extend(seen);
                    if tx.send(FromAgent::Done(results)).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            },
            _ = beat.tick() => {
                if tx.send(FromAgent::Heartbeat).is_err() {
                    return;
                }
            }
        }
    }
}

/// `DRIVERS` drivers run `tasks` tasks each, every task's argument its submission time;
/// returns tasks/s.
fn load(addr: &str, tasks: u64) -> Result<f64> {
    let drivers: Vec<DistributedDispatcher> = (0..DRIVERS)
        .map(|_| {
            let d = DistributedDispatcher::new(addr);
            d.connect().map(|()| d).map_err(|e| e.to_string())
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = drivers
            .iter()
            .map(|d| {
                scope.spawn(move || {
                    let ids: Vec<_> =
                        (0..TASKS_PER_DRIVER).map(|_| d.run(noop, now_us())).collect();
                    wait(d, &ids).map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a driver panicked".to_string())?)
    })?;
    Ok((DRIVERS as u64 * tasks) as f64 / start.elapsed().as_secs_f64())
}

/// Agents the server has connected now.
fn agents_connected(addr: &str) -> Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let asked = runtime.block_on(blitzen_server::observe::ask(
        addr,
        None,
        &PeerTls::default(),
        FromObserver::Status,
        Duration::from_secs(10),
    ));
    match asked.map_err(|e| e.to_string())? {
        ToObserver::Status(status) => Ok(status.agents.len()),
        other => Err(format!("status: {other:?}")),
    }
}

/// Simulating processes of `PER_PROCESS` agents (fewer in the last), all connected.
fn simulators(addr: &str, agents: usize) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    let mut left = agents;
    while left > 0 {
        let n = left.min(PER_PROCESS);
        procs.push(Proc::simulated_agents(addr, n)?);
        left -= n;
    }
    for p in &mut procs {
        p.ready()?;
    }
    Ok(procs)
}

struct Run {
    ratio: f64,
    rate_10: f64,
    rate_1000: f64,
    cpu_us_per_task: f64,
    bytes_per_idle_agent: f64,
    p99_us: f64,
    notice_ms: f64,
}

fn once(few: usize, many: usize, tasks: u64) -> Result<Run> {
    let (server, addr) = Proc::server()?;
    let sims = simulators(&addr, few)?;
    let rate_few = load(&addr, tasks)?;
    drop(sims);
    while agents_connected(&addr)? > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = usage::rss_bytes(server.pid())? as f64;
    let mut sims = simulators(&addr, many)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = usage::rss_bytes(server.pid())? as f64;
    let cpu_before = usage::cpu_ns(server.pid())?;
    let rate_many = load(&addr, tasks)?;
    // Counted over the server's live threads: one that ended meanwhile would take its time
    // away, and a figure that went down is no figure.
    let cpu = (usage::cpu_ns(server.pid())?.checked_sub(cpu_before))
        .filter(|&ns| ns > 0)
        .ok_or("the server's CPU time did not grow while it served the load")?;
    let mut p99s = Vec::new();
    for p in &mut sims {
        p.go()?;
        let line = p.report()?;
        p99s.push(
            line.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).ok_or("no p99")?,
        );
    }
    // 100 agents killed at once: one simulating process, `kill -9`.
    let victim = sims.first().map(Proc::pid).ok_or("no agents")?;
    let started = Instant::now();
    let pid = rustix::process::Pid::from_raw(victim as i32).ok_or("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(|e| e.to_string())?;
    let expected = many - PER_PROCESS.min(many);
    while agents_connected(&addr)? > expected {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the server never noticed the killed agents".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let notice_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(sims);
    drop(server);
    let tasks = (DRIVERS as u64 * tasks) as f64;
    Ok(Run {
        ratio: 100.0 * rate_many / rate_few,
        rate_10: rate_few,
        rate_1000: rate_many,
        cpu_us_per_task: cpu as f64 / 1e3 / tasks,
        bytes_per_idle_agent: (idle - before) / many as f64,
        p99_us: p99s.iter().copied().fold(0.0, f64::max),
        notice_ms,
    })
}

fn w17_sizes() -> Result<(usize, usize, u64)> {
    let Ok(text) = std::env::var(W17_SIZES_ENV) else {
        return Ok((10, 1_000, TASKS_PER_DRIVER));
    };
    let n: Vec<u64> = text.split(',').filter_map(|n| n.trim().parse().ok()).collect();
    match n[..] {
        [few, many, tasks] if 0 < few && few <= many && tasks > 0 => {
            Ok((few as usize, many as usize, tasks))
        }
        _ => Err(format!("{W17_SIZES_ENV}=`{text}` is not `FEW,MANY,TASKS` counts")),
    }
}

pub(super) fn many_agents(runs: usize) -> Result<Measured> {
    let (few, many, tasks) = w17_sizes()?;
    let all: Vec<Run> = (0..runs).map(|_| once(few, many, tasks)).collect::<Result<_>>()?;
    let of = |f: fn(&Run) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
    Ok(Measured {
        params: json!({ "agents": [few, many], "drivers": DRIVERS, "tasks_per_driver": tasks,
                        "agents_per_process": PER_PROCESS, "agents_answer": "at once, no worker processes" }),
        runs: all.iter().map(|r| r.ratio).collect(),
        units: "% of the rate with few agents",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_few", of(|r| r.rate_10)),
            ("tasks_per_s_many", of(|r| r.rate_1000)),
            ("server_cpu_us_per_task", of(|r| r.cpu_us_per_task)),
            ("server_bytes_per_idle_agent", of(|r| r.bytes_per_idle_agent)),
            ("submit_to_assignment_p99_us", of(|r| r.p99_us)),
            ("notice_100_killed_ms", of(|r| r.notice_ms)),
        ],
    })
}
