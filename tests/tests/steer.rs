//! End-to-end tests of seeing and steering a running cluster, against the real `blitzen-server`
//! and `blitzen-client` binaries on 127.0.0.1: cancelling queued and running tasks from a
//! driver and from the shell, and the `status` and `failures` commands in text and JSON.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blitzen::distributed::{DistributedDispatcher, Secret};
use blitzen::{CommandSpec, Fetch, TaskError, command, sleep};
use blitzen_tests::cluster::{TempFile, binary, driver, start_agent, start_server};
use blitzen_tests::trial;
use blitzen_tests::{check, fail, is_alive};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

const SECRET: &[u8] = b"the cluster's secret for the steering tests";

/// What a `blitzen-server` subcommand printed, and whether it succeeded.
struct Said {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `blitzen-server ARGS` to its end.
fn server_command(args: &[&str]) -> Result<Said, Failed> {
    let output = Command::new(binary("blitzen-server").map_err(fail)?)
        .args(args)
        .env_remove("BLITZEN_SECRET")
        .output()
        .map_err(fail)?;
    Ok(Said {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `status --json` parsed.
fn status_json(addr: &str, secret: &TempFile) -> Result<serde_json::Value, Failed> {
    let said =
        server_command(&["status", "--server", addr, "--secret-file", secret.arg(), "--json"])?;
    check(said.ok, format!("status failed: {}{}", said.stdout, said.stderr))?;
    serde_json::from_str(&said.stdout).map_err(|e| fail(format!("{e}: {}", said.stdout)))
}

/// Asks for the status until `done` holds (the agents report their workers once a second).
fn status_until(
    addr: &str,
    secret: &TempFile,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_json(addr, secret)?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("the status never showed {what}: {status}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A shell script that starts `sleep 600`, writes its pid to `pid_file` and waits for it: a
/// task whose child must die with it.
fn sleeper(pid_file: &Path) -> CommandSpec {
    let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
    CommandSpec::new("sh").arg("-c").arg(script)
}

/// Waits until the file holds a pid.
fn pid_in(file: &Path) -> Result<u32, Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(pid) =
            std::fs::read_to_string(file).ok().and_then(|text| text.trim().parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(format!("no pid in {}", file.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dies(pid: u32) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(!is_alive(pid), format!("process {pid} of the cancelled task survived"))
}

fn a_driver_cancels_queued_and_running_tasks_on_a_cluster() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "cancel-agent").map_err(fail)?;
    let d = driver(&server.addr);
    let done = d.run(sleep, 0.0);
    check(
        d.get_results_with(std::slice::from_ref(&done), Fetch::keep().within(WAIT)).is_ok(),
        "ran",
    )?;
    let pid_file = TempFile::new("pid", b"").map_err(fail)?;
    let running = d.run(command, sleeper(&pid_file.path));
    let queued: Vec<_> = (0..3).map(|_| d.run(sleep, 0.01)).collect();
    let child = pid_in(&pid_file.path)?;
    d.cancel(&running).map_err(fail)?;
    d.cancel(&queued[1]).map_err(fail)?;
    d.cancel(&done).map_err(fail)?;
    let r = d.get_results_with(&[running], Fetch::default().within(WAIT)).map_err(fail)?;
    match &r[0] {
        Err(TaskError::Cancelled { reason, ctx }) => {
            check(reason.contains("while running"), format!("reason: {reason}"))?;
            let host = ctx.worker.as_ref().and_then(|w| w.host.clone());
            check(host.as_deref() == Some("cancel-agent"), format!("where: {ctx}"))?;
        }
        other => return Err(format!("the running task: {other:?}").into()),
    }
    dies(child)?;
    let rest = d.get_results_with(&queued, Fetch::default().within(WAIT)).map_err(fail)?;
    check(rest[0].is_ok() && rest[2].is_ok(), format!("the others run: {rest:?}"))?;
    check(
        matches!(&rest[1], Err(TaskError::Cancelled { .. })),
        format!("the cancelled one: {:?}", rest[1]),
    )?;
    let kept = d.get_results_with(&[done], Fetch::default().within(WAIT)).map_err(fail)?;
    check(kept[0].is_ok(), format!("a finished task keeps its value: {kept:?}"))?;
    // The agent is back to one worker and runs tasks.
    let after = d.run(sleep, 0.0);
    let r = d.get_results_with(&[after], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r[0].is_ok(), format!("after the cancel: {r:?}"))
}

fn status_failures_and_cancel_from_the_shell() -> Result<(), Failed> {
    let secret = TempFile::new("secret", SECRET).map_err(fail)?;
    let server = start_server(&["--secret-file", secret.arg()]).map_err(fail)?;
    let addr = server.addr.clone();
    let _agent = blitzen_tests::cluster::start_agent_with(
        &addr,
        2,
        "status-agent",
        &["--secret-file", secret.arg()],
    )
    .map_err(fail)?;
    let key = Secret::new(SECRET, "test").map_err(fail)?;
    let session = "status-session";
    let d = DistributedDispatcher::new(&addr)
        .with_connect_timeout(Duration::from_secs(20))
        .with_secret(key)
        .with_session(session);
    // A failure with a whole error to show: a timeout.
    let failed = d.run_with_timeout(sleep, 30.0, Duration::from_millis(300));
    let r = d.get_results_with(&[failed], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[0], Err(TaskError::TimedOut { .. })), format!("{r:?}"))?;
    // Two long tasks keep both workers busy, two more wait behind them.
    let long: Vec<_> = (0..4).map(|_| d.run(sleep, 600.0)).collect();
    let busy = status_until(&addr, &secret, "two busy workers", |s| s["agents"][0]["busy"] == 2)?;
    let agent = &busy["agents"][0];
    check(agent["host"] == "status-agent" && agent["workers"] == 2, format!("agent: {agent}"))?;
    let states = agent["worker_states"].as_array().ok_or("no worker states")?;
    check(
        states.iter().all(|w| w["task"]["task"] == "sleep" && w["task"]["session"] == session),
        format!("what the workers run: {states:?}"),
    )?;
    let s = (busy["sessions"].as_array().into_iter().flatten())
        .find(|s| s["name"] == session)
        .ok_or("the session is not listed")?;
    check(
        s["submitted"] == 5 && s["failed"] == 1 && s["running"].as_u64() >= Some(2),
        format!("session: {s}"),
    )?;
    let failure = &busy["recent_failures"][0];
    check(
        failure["kind"] == "TimedOut"
            && failure["host"] == "status-agent"
            && failure["error"].as_str().is_some_and(|e| e.contains("timed out")),
        format!("failure: {failure}"),
    )?;
    // The same in words.
    let text = server_command(&["status", "--server", &addr, "--secret-file", secret.arg()])?;
    check(text.ok, format!("status: {}", text.stderr))?;
    for shown in ["status-agent", session, "TimedOut", "AGENT", "SESSION"] {
        check(text.stdout.contains(shown), format!("`{shown}` missing from:\n{}", text.stdout))?;
    }
    let listed = server_command(&[
        "failures",
        "--server",
        &addr,
        "--secret-file",
        secret.arg(),
        "--session",
        session,
    ])?;
    check(
        listed.ok && listed.stdout.contains("TimedOut") && listed.stdout.contains("timed out"),
        format!("failures:\n{}{}", listed.stdout, listed.stderr),
    )?;
    // Cancel the whole session from the shell: the driver hears each task cancelled.
    let cancel = server_command(&[
        "cancel",
        "--server",
        &addr,
        "--secret-file",
        secret.arg(),
        "--session",
        session,
        "--all",
        "--json",
    ])?;
    check(cancel.ok, format!("cancel: {}{}", cancel.stdout, cancel.stderr))?;
    let report: serde_json::Value = serde_json::from_str(&cancel.stdout).map_err(fail)?;
    check(
        report["queued"].as_u64().unwrap_or(0) + report["running"].as_u64().unwrap_or(0) == 4,
        format!("cancel report: {report}"),
    )?;
    let r = d.get_results_with(&long, Fetch::default().within(WAIT)).map_err(fail)?;
    check(
        r.iter().all(|r| matches!(r, Err(TaskError::Cancelled { .. }))),
        format!("after the session's cancel: {r:?}"),
    )?;
    let after = status_until(&addr, &secret, "the cancels counted", |s| {
        s["server"]["cancelled"] == 4 && s["agents"][0]["busy"] == 0
    })?;
    check(after["server"]["failed"] == 1, format!("server: {}", after["server"]))?;
    // Errors: an unknown session is one JSON value and exit code 1; so is a wrong secret.
    let unknown = server_command(&[
        "failures",
        "--server",
        &addr,
        "--secret-file",
        secret.arg(),
        "--session",
        "nope",
        "--json",
    ])?;
    let error: serde_json::Value = serde_json::from_str(&unknown.stdout).map_err(fail)?;
    check(
        !unknown.ok && error["error"].as_str().is_some_and(|e| e.contains("no session `nope`")),
        format!("unknown session: {}", unknown.stdout),
    )?;
    let wrong = TempFile::new("wrong", b"not the cluster's secret at all").map_err(fail)?;
    let refused = server_command(&["status", "--server", &addr, "--secret-file", wrong.arg()])?;
    check(
        !refused.ok && refused.stderr.contains("wrong secret"),
        format!("wrong secret: {}", refused.stderr),
    )?;
    let none = server_command(&["status", "--server", &addr, "--json"])?;
    let error: serde_json::Value = serde_json::from_str(&none.stdout).map_err(fail)?;
    check(
        !none.ok && error["error"].as_str().is_some_and(|e| e.contains("requires a shared secret")),
        format!("no secret: {}", none.stdout),
    )?;
    check(server.process.log_text().contains("observer connected"), "the server logs observers")
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(a_driver_cancels_queued_and_running_tasks_on_a_cluster),
        trial!(status_failures_and_cancel_from_the_shell),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
