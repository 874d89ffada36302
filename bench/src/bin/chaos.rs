//! A chaos soak of a durable cluster: a server with a data directory and three agents of two
//! workers, while a driver runs batches of 2,000 short tasks. Every few seconds something
//! breaks: the server is killed with SIGKILL and started again on its directory, an agent is
//! killed and started again, or stopped for 2–4 s, or one of its workers is killed. At the end
//! it prints one JSON line: the tasks still unresolved 90 s after their batch was submitted
//! (the goal is 0), the tasks started or finished more than once (a task whose worker or agent
//! was killed runs again by design), the results the driver dropped as sent twice, and the
//! server's memory, run by run.
//!
//! Run with `cargo run --release --bin chaos -- --minutes 10` (`--server-every 9`,
//! `--chaos-every 1.5`, in seconds, change the pace). It starts its own processes on
//! 127.0.0.1 and stops them when it ends.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blitzen::distributed::DistributedDispatcher;
use blitzen::{DispatchError, Fetch};

const ROLE: &str = "BLITZEN_CHAOS_ROLE";
const AGENTS: usize = 3;
const WORKERS: usize = 2;
const BATCH: u64 = 2_000;
/// A task unresolved this long after its batch was submitted counts against the goal.
const PATIENCE: Duration = Duration::from_secs(90);

/// Appends `s N` to `file` as it starts and `e N` as it ends, and naps `millis` in between.
#[blitzen::task]
fn nap(file: String, n: u64, millis: u64) -> Result<u64, String> {
    let note = |what: &str| -> Result<(), String> {
        let mut f =
            std::fs::OpenOptions::new().append(true).open(&file).map_err(|e| e.to_string())?;
        f.write_all(format!("{what} {n}\n").as_bytes()).map_err(|e| e.to_string())
    };
    note("s")?;
    std::thread::sleep(Duration::from_millis(millis));
    note("e")?;
    Ok(n)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    blitzen::worker_main();
    match std::env::var(ROLE).ok().as_deref() {
        Some("server") => return serve(),
        Some("agent") => return agent(),
        _ => {}
    }
    let mut args = std::env::args().skip(1);
    let (mut minutes, mut server_every, mut chaos_every) = (10.0, 9.0, 1.5);
    while let Some(flag) = args.next() {
        let value: f64 = args.next().ok_or(format!("{flag} needs a value"))?.parse()?;
        match flag.as_str() {
            "--minutes" => minutes = value,
            "--server-every" => server_every = value,
            "--chaos-every" => chaos_every = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    soak(Duration::from_secs_f64(minutes * 60.0), server_every, chaos_every)
}

/// The server role: serves on `BLITZEN_CHAOS_PORT` with `BLITZEN_CHAOS_DIR` until killed.
fn serve() -> Result<(), Error> {
    let port: u16 = std::env::var("BLITZEN_CHAOS_PORT")?.parse()?;
    let dir = PathBuf::from(std::env::var("BLITZEN_CHAOS_DIR")?);
    blitzen::logging::set_loglevel("warn")?;
    DistributedDispatcher::new(format!("127.0.0.1:{port}"))
        .with_data_dir(dir)
        .spawn_server(None)?;
    Ok(())
}

/// The agent role: `BLITZEN_CHAOS_SERVER`'s agent named `BLITZEN_CHAOS_NAME`, until killed.
fn agent() -> Result<(), Error> {
    let server = std::env::var("BLITZEN_CHAOS_SERVER")?;
    let mut config = blitzen_client::AgentConfig::new(&server, WORKERS);
    config.host = std::env::var("BLITZEN_CHAOS_NAME")?;
    config.heartbeat = Duration::from_secs(1);
    blitzen::logging::set_loglevel("warn")?;
    blitzen_client::run_until_signal(config)?;
    Ok(())
}

/// A child in a role, killed when dropped.
struct Role(Child);

impl Role {
    fn start(role: &str, env: &[(&str, String)], log: &Path) -> Result<Self, Error> {
        let mut command = Command::new(std::env::current_exe()?);
        command.env(ROLE, role).stdin(Stdio::null()).stdout(Stdio::null());
        command.stderr(std::fs::OpenOptions::new().create(true).append(true).open(log)?);
        for (name, value) in env {
            command.env(name, value);
        }
        Ok(Self(command.spawn()?))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// SIGKILL, and waits for it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("0");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(&pid.to_string())
        })
        .collect()
}

/// What the chaos did.
#[derive(Debug, Default)]
struct Done {
    server_kills: u32,
    agent_kills: u32,
    agent_stops: u32,
    worker_kills: u32,
    /// The server's memory just before each kill, in MiB.
    server_rss_mib: Vec<f64>,
}

fn soak(length: Duration, server_every: f64, chaos_every: f64) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("blitzen-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("processes.log");
    let tally = dir.join("tally");
    std::fs::write(&tally, b"")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let server_env = vec![
        ("BLITZEN_CHAOS_PORT", port.to_string()),
        ("BLITZEN_CHAOS_DIR", dir.join("data").display().to_string()),
    ];
    let agent_env = |n: usize| {
        vec![("BLITZEN_CHAOS_SERVER", addr.clone()), ("BLITZEN_CHAOS_NAME", format!("ag{n}"))]
    };
    let server = Arc::new(Mutex::new(Role::start("server", &server_env, &log)?));
    let agents: Arc<Mutex<Vec<Role>>> = Arc::new(Mutex::new(
        (1..=AGENTS)
            .map(|n| Role::start("agent", &agent_env(n), &log))
            .collect::<Result<_, _>>()?,
    ));
    let d = DistributedDispatcher::new(&addr)
        .with_connect_timeout(Duration::from_secs(60))
        .with_reconnect_window(Duration::from_secs(600));
    d.connect()?;

    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (server, agents, stop) = (server.clone(), agents.clone(), stop.clone());
        let (log, server_env) = (log.clone(), server_env.clone());
        let agent_env: Vec<_> = (1..=AGENTS).map(agent_env).collect();
        std::thread::spawn(move || -> Result<Done, String> {
            let mut done = Done::default();
            let mut next_server = Instant::now() + Duration::from_secs_f64(server_every);
            while !stop.load(Ordering::Relaxed) {
                let pause = chaos_every * (0.5 + fastrand::f64());
                std::thread::sleep(Duration::from_secs_f64(pause));
                if Instant::now() >= next_server {
                    next_server = Instant::now() + Duration::from_secs_f64(server_every);
                    let mut s = server.lock().map_err(|e| e.to_string())?;
                    done.server_rss_mib.push(rss(s.pid()) as f64 / 1048576.0);
                    s.kill();
                    *s = Role::start("server", &server_env, &log).map_err(|e| e.to_string())?;
                    done.server_kills += 1;
                    continue;
                }
                let n = fastrand::usize(..AGENTS);
                let mut agents = agents.lock().map_err(|e| e.to_string())?;
                match fastrand::u8(..3) {
                    0 => {
                        agents[n].kill();
                        agents[n] =
                            Role::start("agent", &agent_env[n], &log).map_err(|e| e.to_string())?;
                        done.agent_kills += 1;
                    }
                    1 => {
                        agents[n].signal(rustix::process::Signal::STOP);
                        std::thread::sleep(Duration::from_secs_f64(2.0 + 2.0 * fastrand::f64()));
                        agents[n].signal(rustix::process::Signal::CONT);
                        done.agent_stops += 1;
                    }
                    _ => {
                        let workers = children(agents[n].pid());
                        let pick = workers.get(fastrand::usize(..workers.len().max(1)));
                        let pid = pick.and_then(|&w| rustix::process::Pid::from_raw(w as i32));
                        if let Some(pid) = pid {
                            let _ =
                                rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                            done.worker_kills += 1;
                        }
                    }
                }
            }
            Ok(done)
        })
    };

    let started = Instant::now();
    let (mut batches, mut unresolved, mut late_batches, mut failed) = (0u64, 0usize, 0u64, 0usize);
    let file = tally.display().to_string();
    while started.elapsed() < length {
        let submitted = Instant::now();
        let ids: Vec<_> = (0..BATCH)
            .map(|i| d.run(nap, (file.clone(), batches * BATCH + i, 3 + fastrand::u64(..8))))
            .collect();
        match d.get_results_with(&ids, Fetch::keep().within(PATIENCE)) {
            Ok(_) => {}
            Err(DispatchError::WaitTimedOut { pending, .. }) => {
                unresolved += pending;
                late_batches += 1;
                eprintln!("batch {batches}: {pending} tasks unresolved after {PATIENCE:?}");
            }
            Err(e) => return Err(e.into()),
        }
        let results =
            d.get_results_with(&ids, Fetch::default().within(Duration::from_secs(600)))?;
        let errors = results.iter().filter(|r| r.is_err()).count();
        if errors > 0 {
            eprintln!(
                "batch {batches}: {errors} tasks failed: {:?}",
                results.iter().find(|r| r.is_err())
            );
        }
        failed += errors;
        batches += 1;
        eprintln!("batch {batches} in {:.1} s", submitted.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let done = chaos.join().map_err(|_| "the chaos thread panicked")??;
    let last_rss = server.lock().map(|s| rss(s.pid()) as f64 / 1048576.0).unwrap_or(0.0);

    let text = std::fs::read_to_string(&tally)?;
    let (mut starts, mut ends): (HashMap<u64, u32>, HashMap<u64, u32>) = Default::default();
    for line in text.lines() {
        let (what, n) = line.split_once(' ').ok_or("a bad tally line")?;
        let n: u64 = n.parse()?;
        *if what == "s" { &mut starts } else { &mut ends }.entry(n).or_default() += 1;
    }
    let tasks = batches * BATCH;
    let never_ended = (0..tasks).filter(|n| !ends.contains_key(n)).count();
    let first = done.server_rss_mib.first().copied().unwrap_or(0.0);
    let peak = done.server_rss_mib.iter().copied().fold(last_rss, f64::max);
    println!(
        "{{\"minutes\": {:.1}, \"batches\": {batches}, \"tasks\": {tasks}, \
         \"unresolved_after_90s\": {unresolved}, \"late_batches\": {late_batches}, \"failed\": {failed}, \
         \"started_more_than_once\": {}, \"ended_more_than_once\": {}, \"never_ended\": {never_ended}, \
         \"duplicates_dropped_by_driver\": {}, \"server_kills\": {}, \"agent_kills\": {}, \
         \"agent_stops\": {}, \"worker_kills\": {}, \"server_rss_mib_first_run\": {first:.1}, \
         \"server_rss_mib_last_run\": {last_rss:.1}, \"server_rss_mib_peak\": {peak:.1}}}",
        started.elapsed().as_secs_f64() / 60.0,
        starts.values().filter(|&&k| k > 1).count(),
        ends.values().filter(|&&k| k > 1).count(),
        d.stats().duplicates,
        done.server_kills,
        done.agent_kills,
        done.agent_stops,
        done.worker_kills,
    );
    d.shutdown();
    drop(agents);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
