//! Agents on a real Slurm: a one-host Slurm cluster of the test's own (see
//! `blitzen_tests::slurm`), the real `blitzen-server --autoscale slurm` submitting real `sbatch`
//! jobs of the real `blitzen-client`, and the job script of `deploy/slurm` under real `sbatch`
//! and `srun`. Without root or Slurm each test is marked ignored, saying why on one line.
//!
//! This binary has its own `main`: started with `BLITZEN_TEST_SLURM_RECIPE_DRIVER` set (by the
//! job script, through `sbatch`'s environment), it is the driver of the recipe's job.

use std::time::{Duration, Instant};

use blitzen::distributed::DistributedDispatcher;
use blitzen::{Fetch, sleep};
use blitzen_tests::cluster::{ServerProcess, TempFile, binary, driver, start_server};
use blitzen_tests::slurm::{Slurm, unavailable};
use blitzen_tests::{check, fail};
use libtest_mimic::{Arguments, Failed, Trial};

/// Set to `COUNT SECONDS`, this binary is the recipe job's driver: it runs COUNT sleeps and
/// writes how many returned right to the file `BLITZEN_TEST_REPORT` names.
const RECIPE_DRIVER_ENV: &str = "BLITZEN_TEST_SLURM_RECIPE_DRIVER";
const REPORT_ENV: &str = "BLITZEN_TEST_REPORT";
const SECRET: &[u8] = b"a secret shared by the server and its Slurm agents";

/// An autoscaling server on a Slurm cluster, its secret and address files.
struct Autoscaled {
    server: ServerProcess,
    address: std::path::PathBuf,
    secret: TempFile,
}

impl Autoscaled {
    /// `blitzen-server --autoscale slurm` with `flags`, then `-- sbatch_args`; agents leave
    /// after 2 s idle, and it decides every 0.3 s.
    fn start(slurm: &Slurm, flags: &[&str], sbatch_args: &[&str]) -> Result<Self, Failed> {
        use std::os::unix::fs::PermissionsExt;
        let secret = TempFile::new("secret", SECRET).map_err(fail)?;
        std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
        let address = slurm.jobs_dir().join("server.address");
        let address_arg = address.display().to_string();
        let mut args = vec![
            "--secret-file",
            secret.arg(),
            "--address-file",
            &address_arg,
            "--autoscale",
            "slurm",
            "--autoscale-interval",
            "0.3s",
        ];
        if !flags.contains(&"--idle-timeout") {
            args.extend(["--idle-timeout", "2s"]);
        }
        args.extend(flags);
        args.push("--");
        args.extend(sbatch_args);
        // The server runs sbatch, squeue and scancel with this cluster's configuration.
        // SAFETY: no other thread of this test reads or writes the environment meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("SLURM_CONF", slurm.conf());
            std::env::set_var("BLITZEN_SECRET", std::str::from_utf8(SECRET).unwrap_or_default());
        }
        let server = start_server(&args).map_err(fail)?;
        Ok(Self { server, address, secret })
    }

    /// A driver with the secret and the pinned certificate.
    fn driver(&self) -> Result<DistributedDispatcher, Failed> {
        let text = std::fs::read_to_string(&self.address).map_err(fail)?;
        let pin = text.lines().find_map(|l| l.strip_prefix("fingerprint=")).ok_or("no pin")?;
        Ok(driver(&self.server.addr)
            .with_secret_file(&self.secret.path)
            .map_err(fail)?
            .with_tls_pin(pin.parse().map_err(fail)?))
    }

    fn autoscale(&self) -> Result<serde_json::Value, Failed> {
        let status = self.server.status().map_err(fail)?;
        Ok(status["autoscale"].clone())
    }

    fn log(&self) -> String {
        self.server.process.log_text()
    }
}

/// A burst of 40 half-second tasks from zero agents: at most 4 jobs are asked for (the
/// maximum), once, never more while they are pending; every task runs once; then every agent
/// leaves after its 2 s idle timeout, and Slurm holds no job.
fn a_burst_scales_from_zero_to_the_maximum_and_back_to_zero(slurm: &Slurm) -> Result<(), Failed> {
    let auto = Autoscaled::start(slurm, &["--max-agents", "4", "--agent-workers", "1"], &[])?;
    let d = auto.driver()?;
    let started = Instant::now();
    let ids: Vec<_> = (0..40).map(|_| d.run(sleep, 0.5)).collect();
    // Slurm and the server's log say nothing when they change: a second thread looks at them
    // every 100 ms while the results come.
    let finished = std::sync::atomic::AtomicBool::new(false);
    let (most_jobs, first_agent, results) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut most, mut first) = (0, None);
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                most = slurm.jobs().map_or(most, |jobs| most.max(jobs.len()));
                if first.is_none() && auto.log().contains("agent connected") {
                    first = Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, first)
        });
        let results = d.get_task_results(&ids, Fetch::default().within(Duration::from_secs(120)));
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        let (most, first) = watcher.join().unwrap_or((usize::MAX, None));
        (most, first, results)
    });
    let done = started.elapsed();
    let results = results.map_err(|e| fail(format!("{e}\n{}", auto.log())))?;
    let right = results.iter().filter(|r| r.decode::<f64>().is_ok_and(|s| s == 0.5)).count();
    check(right == 40, format!("{right} of 40 tasks returned right"))?;
    check(most_jobs <= 4, format!("Slurm held {most_jobs} jobs at once; the maximum is 4"))?;
    let submitted = auto.autoscale()?["submitted"].as_u64().unwrap_or(0);
    check(submitted == 4, format!("{submitted} jobs were asked for, not 4:\n{}", auto.log()))?;
    // Idle timeout (2 s) + a tick, and Slurm's own end of the jobs.
    let gone = slurm.wait_no_jobs(Duration::from_secs(20)).map_err(fail)?;
    let after = started.elapsed() - done;
    check(gone, format!("jobs left in Slurm: {:?}\n{}", slurm.jobs(), auto.log()))?;
    let log = auto.log();
    let left = log.lines().filter(|l| l.contains("agent left")).count();
    check(left == 4, format!("{left} agents left cleanly, not 4:\n{log}"))?;
    check(!log.contains("agent disconnected"), format!("an agent was lost:\n{log}"))?;
    println!(
        "40 × 0.5 s from zero agents on Slurm: first agent after {:.2} s, all done after {:.2} s, \
         every job gone {:.2} s later; {most_jobs} jobs at most",
        first_agent.unwrap_or_default().as_secs_f64(),
        done.as_secs_f64(),
        after.as_secs_f64()
    );
    Ok(())
}

/// Jobs that stay pending (they may begin only in an hour): the autoscaler asks for 3 — its
/// maximum — and no more over many ticks, shows them pending, and cancels them when it stops.
fn pending_jobs_are_not_asked_for_again_and_are_cancelled_at_the_stop(
    slurm: &Slurm,
) -> Result<(), Failed> {
    let mut auto = Autoscaled::start(slurm, &["--max-agents", "3"], &["--begin=now+3600"])?;
    let d = auto.driver()?;
    let _ids: Vec<_> = (0..50).map(|_| d.run(sleep, 0.1)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while slurm.jobs().map_err(fail)?.len() < 3 {
        check(Instant::now() < deadline, format!("3 jobs not asked for:\n{}", auto.log()))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ten ticks more: nothing more is asked for.
    std::thread::sleep(Duration::from_secs(3));
    let jobs = slurm.jobs().map_err(fail)?;
    check(jobs.len() == 3 && jobs.iter().all(|(_, s)| s == "PENDING"), format!("{jobs:?}"))?;
    let a = auto.autoscale()?;
    check(a["submitted"] == 3 && a["pending"] == 3, format!("{a}"))?;
    check(a["last_decision"].as_str().is_some_and(|d| d.contains("coming")), format!("{a}"))?;
    let stopped = auto.server.process.stop().map_err(fail)?;
    check(stopped.success(), format!("the server exited {stopped}"))?;
    let jobs = slurm.jobs().map_err(fail)?;
    check(jobs.is_empty(), format!("jobs left after the server stopped: {jobs:?}"))?;
    check(auto.log().contains("every allocation withdrawn"), auto.log())?;
    Ok(())
}

/// Agents whose jobs last 12 s (their own limit 10 s) and tasks of 3 s with a 4 s timeout:
/// an agent takes a task only while it can finish before the limit, then leaves at its limit
/// with nothing running; the rest runs on agents asked for after. Nothing is lost.
fn agents_drain_before_their_time_limit(slurm: &Slurm) -> Result<(), Failed> {
    let flags = ["--max-agents", "2", "--agent-time-limit", "12s", "--idle-timeout", "60s"];
    let auto = Autoscaled::start(slurm, &flags, &[])?;
    let d = auto.driver()?;
    let ids: Vec<_> =
        (0..6).map(|_| d.run_with_timeout(sleep, 3.0, Duration::from_secs(4))).collect();
    let results = d
        .get_task_results(&ids, Fetch::default().within(Duration::from_secs(150)))
        .map_err(fail)?;
    let right = results.iter().filter(|r| r.decode::<f64>().is_ok_and(|s| s == 3.0)).count();
    check(right == 6, format!("{right} of 6 returned right: {results:?}\n{}", auto.log()))?;
    check(slurm.wait_no_jobs(Duration::from_secs(30)).map_err(fail)?, "jobs left")?;
    let log = auto.log();
    let left: Vec<&str> = log.lines().filter(|l| l.contains("agent left")).collect();
    check(!left.is_empty(), format!("no agent left by its time limit:\n{log}"))?;
    check(
        left.iter().all(|l| l.contains("time limit") && l.contains("handed_back=0")),
        format!("an agent handed tasks back:\n{log}"),
    )?;
    check(!log.contains("agent disconnected"), format!("an agent was lost:\n{log}"))?;
    Ok(())
}

/// `sbatch` refuses every job (no such partition): the autoscaler backs off, then pauses after 5
/// failures with the reason in its status, and asks nothing more until `blitzen-server resume`.
fn a_failing_sbatch_backs_off_and_pauses(slurm: &Slurm) -> Result<(), Failed> {
    let auto = Autoscaled::start(slurm, &[], &["--partition=nosuch"])?;
    let d = auto.driver()?;
    let _ids: Vec<_> = (0..5).map(|_| d.run(sleep, 0.1)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        let a = auto.autoscale()?;
        if !a["paused"].is_null() {
            break a;
        }
        check(Instant::now() < deadline, format!("not paused: {a}\n{}", auto.log()))?;
        std::thread::sleep(Duration::from_millis(200));
    };
    let paused = a["paused"].as_str().unwrap_or_default();
    check(paused.contains("5 submissions") && paused.contains("partition"), format!("{a}"))?;
    check(a["submitted"] == 0 && a["failed_submissions"] == 5, format!("{a}"))?;
    let log = auto.log();
    let failed = log.lines().filter(|l| l.contains("autoscaling: submission failed")).count();
    check(failed == 5, format!("{failed} failed submissions logged, not 5:\n{log}"))?;
    check(
        log.contains("retry_in=0.3s") && log.contains("retry_in=2.4s"),
        format!("no back-off:\n{log}"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let again = auto.log().lines().filter(|l| l.contains("autoscaling: submission failed")).count();
    check(again == 5, "it asked again while paused")?;
    let text = std::process::Command::new(binary("blitzen-server").map_err(fail)?)
        .args(["status", "--server", &auto.server.addr])
        .output()
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&text.stdout);
    check(text.contains("PAUSED until `blitzen-server resume`"), text.to_string())?;
    // Resumed by a person: it asks again at once (and fails again, the partition still
    // being wrong).
    let resumed = std::process::Command::new(binary("blitzen-server").map_err(fail)?)
        .args(["resume", "--server", &auto.server.addr])
        .output()
        .map_err(fail)?;
    let said = String::from_utf8_lossy(&resumed.stdout);
    check(said.contains("resumed; it had paused: 5 submissions"), format!("{said}{resumed:?}"))?;
    check(
        auto.server.process.wait_for_log(
            "autoscaling: submission failed",
            6,
            Duration::from_secs(10),
        ),
        auto.log(),
    )?;
    check(auto.log().contains("autoscaling resumed by an observer"), auto.log())?;
    Ok(())
}

/// `--dry-run` prints the `sbatch` line of each job it would ask for — the maximum, once — and
/// submits nothing.
fn a_dry_run_prints_the_jobs_and_submits_nothing(slurm: &Slurm) -> Result<(), Failed> {
    let auto =
        Autoscaled::start(slurm, &["--dry-run", "--max-agents", "3"], &["--partition=debug"])?;
    let d = auto.driver()?;
    let _ids: Vec<_> = (0..20).map(|_| d.run(sleep, 0.1)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while auto.autoscale()?["submitted"].as_u64().unwrap_or(0) < 3 {
        check(Instant::now() < deadline, auto.log())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut server = auto.server;
    server.process.stop().map_err(fail)?;
    let printed = server.process.stdout_rest();
    let lines: Vec<&str> = printed.lines().filter(|l| l.starts_with("sbatch ")).collect();
    check(lines.len() == 3, format!("{} sbatch lines, not 3:\n{printed}", lines.len()))?;
    check(lines.iter().all(|l| l.contains("'--partition=debug'")), printed.to_string())?;
    check(slurm.jobs().map_err(fail)?.is_empty(), "a dry run submitted a job")?;
    Ok(())
}

/// A graph whose 20 tasks wait on one long root: one agent is asked for, for the root; the
/// waiting ones ask for none until the root is done.
fn tasks_waiting_on_inputs_ask_for_no_agent(slurm: &Slurm) -> Result<(), Failed> {
    let auto = Autoscaled::start(slurm, &["--max-agents", "5"], &[])?;
    let d = auto.driver()?;
    let root = d.run(sleep, 4.0);
    let children: Vec<_> = (0..20)
        .map(|_| d.after(&[root]).run(sleep, 0.1))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !auto.log().contains("agent connected") {
        check(Instant::now() < deadline, auto.log())?;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The root runs for 4 s: meanwhile, ten ticks and more.
    std::thread::sleep(Duration::from_secs(2));
    let a = auto.autoscale()?;
    check(a["submitted"] == 1, format!("agents asked for tasks that wait: {a}"))?;
    let results = d
        .get_task_results(&children, Fetch::default().within(Duration::from_secs(60)))
        .map_err(fail)?;
    check(results.iter().all(|r| r.decode::<f64>().is_ok()), format!("{results:?}"))?;
    Ok(())
}

/// A task of this program, which the stock agent does not have.
#[blitzen::task]
fn triple(x: u64) -> u64 {
    3 * x
}

/// `--agent-program "THIS agent"`: the jobs run this program as an agent
/// (`blitzen::distributed::agent_main`), which serves its own task.
fn a_programs_own_tasks_run_on_the_agents_it_asks_for(slurm: &Slurm) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    let program = format!("{} agent", exe.display());
    let auto = Autoscaled::start(slurm, &["--max-agents", "2", "--agent-program", &program], &[])?;
    let d = auto.driver()?;
    let ids: Vec<_> = (1..=20).map(|x| d.run(triple, x)).collect();
    let results =
        d.get_task_results(&ids, Fetch::default().within(Duration::from_secs(90))).map_err(fail)?;
    let got: Vec<u64> = results.iter().filter_map(|r| r.decode().ok()).collect();
    check(got == (1..=20).map(|x| 3 * x).collect::<Vec<_>>(), format!("{got:?}\n{}", auto.log()))?;
    check(slurm.wait_no_jobs(Duration::from_secs(30)).map_err(fail)?, "jobs left")?;
    Ok(())
}

/// The job script of `deploy/slurm` under real `sbatch` and `srun`: the server, one agent, and
/// this binary as the driver of 100 sleeps; the job ends when the driver does, the server and
/// the agent stopping cleanly (no step killed).
fn the_sbatch_recipe_runs_under_real_slurm(slurm: &Slurm) -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let dir = slurm.jobs_dir();
    let secret = dir.join("recipe-secret");
    std::fs::write(&secret, SECRET).map_err(fail)?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    let bin = binary("blitzen-server").map_err(fail)?;
    let bin_dir = format!("{}/", bin.parent().ok_or("no folder")?.display());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/slurm/blitzen.sbatch");
    let output = dir.join("recipe-%j.out");
    let report = dir.join("recipe-report");
    let submitted = slurm
        .command("sbatch")
        .args(["--parsable", "--nodes=1", "--cpus-per-task=2", "--time=5"])
        .arg(format!("--output={}", output.display()))
        .arg(script)
        .arg(std::env::current_exe().map_err(fail)?)
        .env("BLITZEN_SECRET_FILE", &secret)
        .env("BLITZEN_BIN", &bin_dir)
        .env("BLITZEN_BIND", "127.0.0.1")
        .env(RECIPE_DRIVER_ENV, "100 0.02")
        .env(REPORT_ENV, &report)
        .current_dir(&dir)
        .output()
        .map_err(fail)?;
    let said = String::from_utf8_lossy(&submitted.stderr);
    check(submitted.status.success(), format!("sbatch failed: {said}"))?;
    let job = String::from_utf8_lossy(&submitted.stdout).trim().to_string();
    let ended = slurm.wait_no_jobs(Duration::from_secs(120)).map_err(fail)?;
    let out_file = dir.join(format!("recipe-{job}.out"));
    let out = std::fs::read_to_string(&out_file).unwrap_or_default();
    check(ended, format!("the job did not end:\n{out}"))?;
    let got = std::fs::read_to_string(&report).unwrap_or_default();
    check(got.trim() == "100", format!("the driver's report: `{got}`\n{out}"))?;
    for bad in ["forcing job termination", "Killed", "srun: error"] {
        check(!out.contains(bad), format!("`{bad}` in the job's output:\n{out}"))?;
    }
    check(
        out.contains("agent stopped") && out.contains("stopped"),
        format!("not stopped cleanly:\n{out}"),
    )?;
    Ok(())
}

/// The recipe job's driver: COUNT sleeps of SECONDS each, on the server the job script started.
fn recipe_driver(spec: &str) -> Result<usize, String> {
    let (count, secs) = spec.split_once(' ').ok_or("COUNT SECONDS")?;
    let (count, secs): (usize, f64) =
        (count.parse().map_err(|_| "count")?, secs.parse().map_err(|_| "seconds")?);
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let pin = env("BLITZEN_TLS_PIN")?.parse().map_err(|e| format!("BLITZEN_TLS_PIN: {e}"))?;
    let d = DistributedDispatcher::new(env("BLITZEN_SERVER")?)
        .with_connect_timeout(Duration::from_secs(30))
        .with_secret_file(env("BLITZEN_SECRET_FILE")?)
        .map_err(|e| e.to_string())?
        .with_tls_pin(pin);
    let ids: Vec<_> = (0..count).map(|_| d.run(sleep, secs)).collect();
    let results = d
        .get_task_results(&ids, Fetch::default().within(Duration::from_secs(90)))
        .map_err(|e| e.to_string())?;
    Ok(results.iter().filter(|r| r.decode::<f64>().is_ok_and(|s| s == secs)).count())
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    blitzen::distributed::agent_main(blitzen::tasks![]);
    if let Ok(spec) = std::env::var(RECIPE_DRIVER_ENV) {
        let outcome = recipe_driver(&spec);
        let text = match &outcome {
            Ok(right) => right.to_string(),
            Err(e) => format!("driver: {e}"),
        };
        let written = std::env::var_os(REPORT_ENV).map(|path| std::fs::write(path, &text));
        return match (outcome, written) {
            (Ok(_), Some(Ok(()))) => std::process::ExitCode::SUCCESS,
            _ => {
                eprintln!("{text}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    type Test = fn(&Slurm) -> Result<(), Failed>;
    let tests: [(&str, Test); 8] = [
        (
            "a_burst_scales_from_zero_to_the_maximum_and_back_to_zero",
            a_burst_scales_from_zero_to_the_maximum_and_back_to_zero,
        ),
        (
            "pending_jobs_are_not_asked_for_again_and_are_cancelled_at_the_stop",
            pending_jobs_are_not_asked_for_again_and_are_cancelled_at_the_stop,
        ),
        ("agents_drain_before_their_time_limit", agents_drain_before_their_time_limit),
        ("a_failing_sbatch_backs_off_and_pauses", a_failing_sbatch_backs_off_and_pauses),
        (
            "a_dry_run_prints_the_jobs_and_submits_nothing",
            a_dry_run_prints_the_jobs_and_submits_nothing,
        ),
        ("tasks_waiting_on_inputs_ask_for_no_agent", tasks_waiting_on_inputs_ask_for_no_agent),
        (
            "a_programs_own_tasks_run_on_the_agents_it_asks_for",
            a_programs_own_tasks_run_on_the_agents_it_asks_for,
        ),
        ("the_sbatch_recipe_runs_under_real_slurm", the_sbatch_recipe_runs_under_real_slurm),
    ];
    let why = unavailable();
    let trials = tests
        .into_iter()
        .map(|(name, test)| match &why {
            Some(_) => Trial::test(name, || Ok(())).with_ignored_flag(true),
            None => Trial::test(name, move || {
                let slurm = Slurm::start(name).map_err(fail)?;
                let outcome = test(&slurm);
                if outcome.is_err() {
                    eprintln!("{}", slurm.logs());
                }
                outcome
            }),
        })
        .collect();
    if let Some(why) = &why {
        eprintln!("slurm tests skipped: {why}");
    }
    libtest_mimic::run(&args, trials).exit_code()
}
