//! The cluster on real addresses: the server, the agents and the driver each on a host of its
//! own — a network namespace the test makes (see `blitzen_tests::netns`) — encrypted with a
//! shared secret, over links that are cut for 30 s or slowed to 1 Mbit/s.
//!
//! This binary has its own `main`: started with `BLITZEN_TEST_NETNS_DRIVER` set, it is the
//! driver, run on its host, and prints what it got as one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use blitzen::distributed::{DistributedDispatcher, Secret};
use blitzen::{Fetch, echo, sleep};
use blitzen_tests::cluster::{Process, TempFile, binary, start_agent_as, start_server_as};
use blitzen_tests::netns::{Host, Network};
use blitzen_tests::wire::Faults;
use blitzen_tests::{check, fail, trial};
use libtest_mimic::{Arguments, Failed};
use serde_bytes::ByteBuf;

/// Started with it set to `ADDR SECRET_FILE KIND COUNT SIZE`, this binary is a driver: it runs
/// COUNT tasks — `echo` of SIZE bytes, or `sleep` of SIZE milliseconds — and prints a
/// [`Report`].
const DRIVER_ENV: &str = "BLITZEN_TEST_NETNS_DRIVER";

/// Started with it set to `KIND COUNT SIZE`, this binary is the driver of a Slurm job: as
/// [`DRIVER_ENV`], finding the server where the job script says (`BLITZEN_SERVER`,
/// `BLITZEN_TLS_PIN`, `BLITZEN_SECRET_FILE`).
const SLURM_DRIVER_ENV: &str = "BLITZEN_TEST_SLURM_DRIVER";
/// How many agents the Slurm job's driver waits for before it submits.
const SLURM_AGENTS_ENV: &str = "BLITZEN_TEST_SLURM_AGENTS";

/// Where the driver writes its report instead of stderr, when set.
const REPORT_ENV: &str = "BLITZEN_TEST_REPORT";

const SECRET: &[u8] = b"a secret shared by every host of the test network";
const WAIT: Duration = Duration::from_secs(60);

/// What the driver got.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Report {
    /// Tasks that returned what they should.
    ok: usize,
    /// The others, in words.
    failed: Vec<String>,
    /// Tasks per host that ran them.
    hosts: BTreeMap<String, usize>,
    /// From the first submission to the last result.
    secs: f64,
    /// Results that reached the driver for a task that had one already (and were dropped).
    duplicates: u64,
}

fn drive(spec: &str) -> Result<Report, String> {
    let [addr, secret, kind, count, size] = spec.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("{DRIVER_ENV}: `{spec}`"));
    };
    let secret = Secret::from_file(std::path::Path::new(secret)).map_err(|e| e.to_string())?;
    run_tasks(DistributedDispatcher::new(addr).with_secret(secret), kind, count, size)
}

/// The driver of a Slurm job: where the server is, as the job script says.
fn drive_in_slurm(spec: &str) -> Result<Report, String> {
    let [kind, count, size] = spec.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("{SLURM_DRIVER_ENV}: `{spec}`"));
    };
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let pin = env("BLITZEN_TLS_PIN")?.parse().map_err(|e| format!("BLITZEN_TLS_PIN: {e}"))?;
    let d = DistributedDispatcher::new(env("BLITZEN_SERVER")?)
        .with_secret_file(env("BLITZEN_SECRET_FILE")?)
        .map_err(|e| e.to_string())?
        .with_tls_pin(pin);
    // Every node's agent first: a few hundred short tasks could all end on the first one.
    let agents: usize = env(SLURM_AGENTS_ENV)?.parse().map_err(|_| SLURM_AGENTS_ENV)?;
    wait_for_agents(agents, Duration::from_secs(60))?;
    run_tasks(d, kind, count, size)
}

/// Waits until the server of the job script has `count` agents, asking `blitzen-server
/// status` (as an operator would: nothing notifies a driver of agents).
fn wait_for_agents(count: usize, limit: Duration) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let server = format!("{}blitzen-server", env("BLITZEN_BIN")?);
    let deadline = Instant::now() + limit;
    loop {
        let out = std::process::Command::new(&server)
            .args(["status", "--server", &env("BLITZEN_SERVER")?, "--json"])
            .args(["--secret-file", &env("BLITZEN_SECRET_FILE")?])
            .args(["--tls-pin", &env("BLITZEN_TLS_PIN")?])
            .output()
            .map_err(|e| format!("{server}: {e}"))?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let seen = status["agents"].as_array().map_or(0, Vec::len);
        if seen >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{seen} agents connected after {limit:?}, not {count}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_tasks(
    d: DistributedDispatcher,
    kind: &str,
    count: &str,
    size: &str,
) -> Result<Report, String> {
    let (count, size): (usize, usize) =
        (count.parse().map_err(|_| "count")?, size.parse().map_err(|_| "size")?);
    let d = d.with_connect_timeout(Duration::from_secs(20));
    let started = Instant::now();
    let ids: Vec<_> = match kind {
        "echo" => (0..count)
            .map(|i| d.run(echo::<ByteBuf>(), ByteBuf::from(vec![i as u8; size])).untyped())
            .collect(),
        _ => (0..count).map(|_| d.run(sleep, size as f64 / 1000.0).untyped()).collect(),
    };
    let results = d
        .get_task_results(&ids, Fetch::default().within(Duration::from_secs(240)))
        .map_err(|e| e.to_string())?;
    let mut report =
        Report { ok: 0, failed: Vec::new(), hosts: BTreeMap::new(), secs: 0.0, duplicates: 0 };
    report.secs = started.elapsed().as_secs_f64();
    for (i, r) in results.iter().enumerate() {
        let host = r.worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
        *report.hosts.entry(host).or_default() += 1;
        let right = match kind {
            "echo" => r.decode::<ByteBuf>().is_ok_and(|v| *v == vec![i as u8; size]),
            _ => r.decode::<f64>().is_ok_and(|s| s == size as f64 / 1000.0),
        };
        if right {
            report.ok += 1;
        } else {
            report.failed.push(format!("task {i}: {:?}", r.outcome().err()));
        }
    }
    report.duplicates = d.stats().duplicates;
    d.shutdown();
    Ok(report)
}

/// The server and `agents` agents of 2 workers, each on its own host; the agents connected.
struct Cluster {
    // Dropped first: the processes stop before their namespaces go.
    agents: Vec<Process>,
    server: Process,
    addr: String,
    hosts: Vec<Host>,
    driver: Host,
    secret: TempFile,
    net: Network,
}

fn cluster(label: &str, agents: usize) -> Result<Cluster, Failed> {
    cluster_with(label, agents, None)
}

/// [`cluster`] whose agents' cables do `faults`.
fn cluster_with(label: &str, agents: usize, faults: Option<Faults>) -> Result<Cluster, Failed> {
    let mut net = Network::new(label).map_err(fail)?;
    let secret = TempFile::new("secret", SECRET).map_err(fail)?;
    let server_host = net.host("server").map_err(fail)?;
    let command = net.command(&server_host, binary("blitzen-server").map_err(fail)?);
    let server = start_server_as(
        command,
        &["--bind", &server_host.addr, "--secret-file", secret.arg(), "--log-level", "info"],
    )
    .map_err(fail)?;
    let addr = server.addr.clone();
    let mut processes = Vec::new();
    let mut hosts = Vec::new();
    for n in 1..=agents {
        let name = format!("a{n}");
        let host = match faults {
            Some(faults) => net.faulty_host(&name, faults),
            None => net.host(&name),
        }
        .map_err(fail)?;
        let command = net.command(&host, binary("blitzen-client").map_err(fail)?);
        let agent = start_agent_as(command, &addr, 2, &name, &["--secret-file", secret.arg()])
            .map_err(fail)?;
        check(agent.wait_for_log("connected", 1, WAIT), format!("{name}:\n{}", agent.log_text()))?;
        check(
            agent.log_text().contains("encrypted=true"),
            format!("{name} is not encrypted:\n{}", agent.log_text()),
        )?;
        processes.push(agent);
        hosts.push(host);
    }
    let driver = net.host("driver").map_err(fail)?;
    Ok(Cluster { agents: processes, server: server.process, addr, hosts, driver, secret, net })
}

impl Cluster {
    /// The driver on its host, running `count` tasks of `kind` and `size`.
    fn start_driver(&self, kind: &str, count: usize, size: usize) -> Result<Process, Failed> {
        let mut command = self.net.command(&self.driver, std::env::current_exe().map_err(fail)?);
        let spec = format!("{} {} {kind} {count} {size}", self.addr, self.secret.arg());
        command.env(DRIVER_ENV, spec).env(REPORT_ENV, self.report_file());
        let _ = std::fs::remove_file(self.report_file());
        blitzen_tests::cluster::start_program(command, "driver").map_err(fail)
    }

    /// Where the driver writes its report.
    fn report_file(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("blitzen-netns-{}-report.json", self.driver.namespace))
    }

    /// Waits for the driver and reads its report.
    fn report(&self, mut driver: Process, limit: Duration) -> Result<Report, Failed> {
        let status = driver.wait_exit(limit).map_err(fail)?;
        let log = driver.log_text();
        check(
            status.is_some_and(|s| s.success()),
            format!("the driver failed ({status:?}):\n{log}"),
        )?;
        let line = std::fs::read_to_string(self.report_file())
            .map_err(|e| fail(format!("no report ({e}):\n{log}")))?;
        let _ = std::fs::remove_file(self.report_file());
        serde_json::from_str(&line).map_err(fail)
    }

    /// Fails unless every task returned what it should, each once: no result reached the driver
    /// twice and, unless agents were lost, the server heard of no task that ran twice.
    fn check_each_once(&self, report: &Report, tasks: usize) -> Result<(), Failed> {
        check(report.ok == tasks && report.failed.is_empty(), format!("{report:?}"))?;
        check(report.duplicates == 0, format!("results reached the driver twice: {report:?}"))?;
        let log = self.server.log_text();
        let lost = log.lines().any(|l| l.contains("agent disconnected"));
        let twice = log.lines().filter(|l| l.contains("ran twice")).count();
        check(lost || twice == 0, format!("{twice} tasks ran twice:\n{log}"))
    }

    /// How many times the server counted agent `name` gone.
    fn lost_count(&self, name: &str) -> usize {
        let log = self.server.log_text();
        log.lines()
            .filter(|l| l.contains("agent disconnected") && l.contains(&format!("host={name}")))
            .count()
    }
}

/// Two agents and a driver on hosts of their own reach the server at its private address over
/// TLS; every task returns its own value once, and both agents ran some.
fn a_cluster_on_private_addresses_runs_every_task_once() -> Result<(), Failed> {
    let c = cluster("plain", 2)?;
    let driver = c.start_driver("echo", 2000, 1024)?;
    let report = c.report(driver, WAIT)?;
    c.check_each_once(&report, 2000)?;
    check(report.hosts.len() == 2, format!("ran on {:?}", report.hosts))?;
    println!("2000 echo tasks of 1 KiB across namespaces: {:.0} tasks/s", 2000.0 / report.secs);
    check(c.lost_count("a1") + c.lost_count("a2") == 0, "an agent was counted lost")
}

/// An agent's cable is pulled for 30 s while it runs tasks: the server counts it lost and runs
/// its tasks on the other agent, it reconnects once the cable is back, every task resolves
/// once, and the other agent is never counted lost.
fn an_agent_cut_off_for_30_s_comes_back_and_nothing_is_lost() -> Result<(), Failed> {
    let c = cluster("cut", 2)?;
    let driver = c.start_driver("sleep", 80, 400)?;
    std::thread::sleep(Duration::from_secs(1));
    c.net.cut(&c.hosts[0]).map_err(fail)?;
    std::thread::sleep(Duration::from_secs(30));
    c.net.mend(&c.hosts[0]).map_err(fail)?;
    let report = c.report(driver, Duration::from_secs(120))?;
    c.check_each_once(&report, 80)?;
    check(c.lost_count("a2") == 0, format!("a2 was counted lost:\n{}", c.server.log_text()))?;
    check(c.lost_count("a1") == 1, format!("a1 lost {} times", c.lost_count("a1")))?;
    let a1 = &c.agents[0];
    check(
        a1.wait_for_log("connected", 2, WAIT),
        format!("a1 never reconnected:\n{}", a1.log_text()),
    )?;
    println!(
        "80 tasks of 0.4 s with a 30 s outage: {:.1} s, by host {:?}",
        report.secs, report.hosts
    );
    Ok(())
}

/// An agent behind a 1 Mbit/s link gets 64 KiB arguments and sends 64 KiB results: each
/// arrives once, and a frame crawling over the link is not taken for silence.
fn an_agent_on_a_1_mbit_link_delivers_every_result_once() -> Result<(), Failed> {
    let c = cluster("slow", 1)?;
    c.net.limit(&c.hosts[0], "1mbit").map_err(fail)?;
    let driver = c.start_driver("echo", 16, 64 << 10)?;
    let report = c.report(driver, Duration::from_secs(120))?;
    c.check_each_once(&report, 16)?;
    check(c.lost_count("a1") == 0, format!("a1 was counted lost:\n{}", c.server.log_text()))?;
    let mbit = 16.0 * 65536.0 * 8.0 / report.secs / 1e6;
    println!(
        "16 echo tasks of 64 KiB over 1 Mbit/s: {:.1} s, {mbit:.2} Mbit/s each way",
        report.secs
    );
    Ok(())
}

/// An agent 50 ms (±10 ms) of round trip away: every task resolves once; how busy its workers
/// stay with the default credit is printed (tasks of 10 ms on 2 workers: 200/s at best).
fn an_agent_50_ms_away_with_jitter_runs_every_task_once() -> Result<(), Failed> {
    let jittery =
        Faults { delay: Duration::from_millis(25), jitter: Duration::from_millis(5), loss: 0.0 };
    let c = cluster_with("far", 1, Some(jittery))?;
    let driver = c.start_driver("sleep", 400, 10)?;
    let report = c.report(driver, Duration::from_secs(120))?;
    c.check_each_once(&report, 400)?;
    check(c.lost_count("a1") == 0, format!("a1 was counted lost:\n{}", c.server.log_text()))?;
    let rate = 400.0 / report.secs;
    println!(
        "400 tasks of 10 ms on 2 workers at 50 ms RTT: {rate:.0} tasks/s, {:.0} % of the workers' 200/s",
        rate / 2.0
    );
    Ok(())
}

/// An agent whose cable loses 2 % of the frames each way: every task resolves once, and the
/// agent is not counted lost.
fn an_agent_on_a_lossy_link_runs_every_task_once() -> Result<(), Failed> {
    let lossy = Faults { delay: Duration::ZERO, jitter: Duration::ZERO, loss: 0.02 };
    let c = cluster_with("lossy", 1, Some(lossy))?;
    let driver = c.start_driver("echo", 1000, 1024)?;
    let report = c.report(driver, Duration::from_secs(120))?;
    c.check_each_once(&report, 1000)?;
    check(c.lost_count("a1") == 0, format!("a1 was counted lost:\n{}", c.server.log_text()))?;
    println!(
        "1000 echo tasks of 1 KiB with 2 % loss each way: {:.0} tasks/s",
        1000.0 / report.secs
    );
    Ok(())
}

/// The job script of `deploy/slurm`, run as Slurm would run it on a job of three nodes — each
/// node a host of the test network, `srun` and `scontrol` stand-ins that run a step's command
/// on the nodes it names: the server on the first node writes its address file, an agent on
/// each node finds the server by it, the driver runs its tasks, and when it ends the script
/// stops the agents and the server.
fn the_slurm_job_script_runs_a_cluster_across_its_nodes() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let mut net = Network::new("slurm").map_err(fail)?;
    let nodes: Vec<Host> =
        (1..=3).map(|n| net.host(&format!("node{n}"))).collect::<Result<_, _>>().map_err(fail)?;
    let dir = std::env::temp_dir().join(format!("blitzen-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).map_err(fail)?;
    let outcome = (|| {
        for (name, text) in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)] {
            let path = dir.join("bin").join(name);
            std::fs::write(&path, text).map_err(fail)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(fail)?;
        }
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).map_err(fail)?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        let bin = binary("blitzen-server").map_err(fail)?;
        let bin_dir = format!("{}/", bin.parent().ok_or("no folder")?.display());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/slurm/blitzen.sbatch");
        let node_list: Vec<&str> = nodes.iter().map(|n| n.namespace.as_str()).collect();
        let path =
            format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut command = std::process::Command::new("bash");
        command
            .arg(script)
            .arg(std::env::current_exe().map_err(fail)?)
            .env("PATH", path)
            .env("SLURM_JOB_NODELIST", node_list.join(","))
            .env("SLURM_JOB_ID", std::process::id().to_string())
            .env("SLURM_CPUS_PER_TASK", "2")
            .env("SLURM_SUBMIT_DIR", &dir)
            .env("BLITZEN_BIN", bin_dir)
            .env("BLITZEN_SECRET_FILE", &secret)
            .env("BLITZEN_BIND", &nodes[0].addr)
            .env(SLURM_DRIVER_ENV, "echo 300 1024")
            .env(SLURM_AGENTS_ENV, "3")
            .env(REPORT_ENV, dir.join("report.json"));
        let mut job = blitzen_tests::cluster::start_program(command, "job").map_err(fail)?;
        let status = job.wait_exit(Duration::from_secs(120)).map_err(fail)?;
        let log = job.log_text();
        check(status.is_some_and(|s| s.success()), format!("the job failed ({status:?}):\n{log}"))?;
        let line = std::fs::read_to_string(dir.join("report.json"))
            .map_err(|e| fail(format!("no report ({e}):\n{log}")))?;
        let report: Report = serde_json::from_str(&line).map_err(fail)?;
        check(report.ok == 300 && report.failed.is_empty(), format!("{report:?}"))?;
        check(report.duplicates == 0, format!("results reached the driver twice: {report:?}"))?;
        let agents = log.lines().filter(|l| l.contains("agent connected")).count();
        check(agents == 3, format!("{agents} agents connected, not 3:\n{log}"))?;
        println!("a Slurm job of 3 nodes: 300 echo tasks in {:.2} s", report.secs);
        let address = dir.join(format!(".blitzen-{}.address", std::process::id()));
        check(!address.exists(), "the job left its address file behind")?;
        for node in &nodes {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", &node.namespace])
                .output()
                .map_err(fail)?;
            let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
            check(left.is_empty(), format!("processes left on {}: {left}", node.namespace))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// `srun` as a job step runs: the command on each node of `--nodelist`, or of the job, in the
/// node's network namespace (a node's name is its namespace's); a SIGINT or SIGTERM stops every
/// task (with SIGTERM). In Python, not a shell: the job script starts steps in the background,
/// where a shell script could not catch the SIGINT that stops them.
const FAKE_SRUN: &str = r#"#!/usr/bin/env python3
import os, signal, subprocess, sys
args, nodes = sys.argv[1:], ""
while args and args[0].startswith("--"):
    option = args.pop(0)
    if option.startswith("--nodelist="):
        nodes = option.split("=", 1)[1]
    elif option.split("=")[0] not in ("--nodes", "--ntasks", "--ntasks-per-node", "--overlap", "--disable-status"):
        sys.exit(f"srun (test): unknown option {option}")
nodes = nodes or os.environ["SLURM_JOB_NODELIST"]
tasks = [subprocess.Popen(["ip", "netns", "exec", node, *args]) for node in nodes.split(",")]
def stop(signum, frame):
    for task in tasks:
        task.send_signal(signal.SIGTERM)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
codes = [task.wait() for task in tasks]
sys.exit(0 if all(code == 0 for code in codes) else 1)
"#;

/// `scontrol show hostnames LIST`: the nodes of a comma-separated list, one a line.
const FAKE_SCONTROL: &str = r#"#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "scontrol (test): only show hostnames" >&2; exit 2; }
tr ',' '\n' <<< "$3"
"#;

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let driver = std::env::var(DRIVER_ENV).map(|spec| drive(&spec));
    let driver =
        driver.or_else(|_| std::env::var(SLURM_DRIVER_ENV).map(|spec| drive_in_slurm(&spec)));
    if let Ok(driven) = driver {
        return match driven.and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string())) {
            // Into a file of its own when asked: in a job, other processes share its stderr.
            Ok(line) => match std::env::var_os(REPORT_ENV) {
                Some(path) => match std::fs::write(path, line) {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("driver: cannot write the report: {e}");
                        std::process::ExitCode::FAILURE
                    }
                },
                None => {
                    eprintln!("{line}");
                    std::process::ExitCode::SUCCESS
                }
            },
            Err(e) => {
                eprintln!("driver: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    let tests = vec![
        trial!(a_cluster_on_private_addresses_runs_every_task_once),
        trial!(an_agent_cut_off_for_30_s_comes_back_and_nothing_is_lost),
        trial!(an_agent_on_a_1_mbit_link_delivers_every_result_once),
        trial!(an_agent_50_ms_away_with_jitter_runs_every_task_once),
        trial!(an_agent_on_a_lossy_link_runs_every_task_once),
        trial!(the_slurm_job_script_runs_a_cluster_across_its_nodes),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
