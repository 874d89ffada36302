//! End-to-end tests of seeing and steering a running cluster, against the real `blitzen-server`
//! and `blitzen-client` binaries on 127.0.0.1: cancelling queued and running tasks from a
//! driver and from the shell, and the `status` and `failures` commands in text and JSON.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blitzen::distributed::{DistributedDispatcher, Secret};
use blitzen::{CommandSpec, Fetch, RunOptions, TaskError, command, sleep};
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
    // Labelled as the Python package labels its calls: the failure is shown by its label.
    let labelled = RunOptions::timeout(Duration::from_millis(300)).with_label("__main__.f2");
    let failed = d.run_with(sleep, 30.0, labelled);
    let r = d.get_results_with(&[failed], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[0], Err(TaskError::TimedOut { .. })), format!("{r:?}"))?;
    check(format!("{:?}", r[0]).contains("`__main__.f2`"), format!("the error: {:?}", r[0]))?;
    // Two long tasks keep both workers busy, two more wait behind them.
    let long: Vec<_> = (0..4).map(|_| d.run(sleep, 600.0)).collect();
    let busy = status_until(&addr, &secret, "two busy workers", |s| s["agents"][0]["busy"] == 2)?;
    let agent = &busy["agents"][0];
    check(agent["host"] == "status-agent" && agent["workers"] == 2, format!("agent: {agent}"))?;
    check(
        agent["capacity"]["cpus"] == 2 && agent["used"]["cpus"] == 2,
        format!("the agent's resources: {agent}"),
    )?;
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
            && failure["task"] == "__main__.f2"
            && failure["host"] == "status-agent"
            && failure["error"].as_str().is_some_and(|e| e.contains("timed out")),
        format!("failure: {failure}"),
    )?;
    let counted = (busy["tasks"].as_array().into_iter().flatten())
        .find(|t| t["task"] == "__main__.f2")
        .ok_or("the label is not counted")?;
    check(counted["failed"] == 1, format!("counted: {counted}"))?;
    // `--task` keeps what is of that name.
    let only = |name: &str| -> Result<serde_json::Value, Failed> {
        let asked = server_command(&[
            "status",
            "--server",
            &addr,
            "--secret-file",
            secret.arg(),
            "--json",
            "--task",
            name,
        ])?;
        check(asked.ok, format!("status --task: {}", asked.stderr))?;
        serde_json::from_str(&asked.stdout).map_err(fail)
    };
    let of_f2 = only("__main__.f2")?;
    check(of_f2["recent_failures"].as_array().is_some_and(|f| f.len() == 1), format!("{of_f2}"))?;
    let of_sleep = only("sleep")?;
    check(
        of_sleep["recent_failures"].as_array().is_some_and(Vec::is_empty),
        format!("{of_sleep}"),
    )?;
    let busy_sleep = of_sleep["agents"][0]["worker_states"].as_array().into_iter().flatten();
    check(busy_sleep.filter(|w| w["task"]["task"] == "sleep").count() == 2, "the sleeps run")?;
    // The same in words.
    let text = server_command(&["status", "--server", &addr, "--secret-file", secret.arg()])?;
    check(text.ok, format!("status: {}", text.stderr))?;
    for shown in [
        "status-agent",
        session,
        "TimedOut",
        "`__main__.f2`",
        "AGENT",
        "SESSION",
        "RESOURCES USED",
        "cpu 2/2",
    ] {
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

/// On a durable server a cancel is saved before anyone hears of it: after a kill -9 right
/// after the answer, the restarted server still has the tasks cancelled, and they never run.
fn a_cancel_on_a_durable_server_survives_a_kill_9() -> Result<(), Failed> {
    let dir = TempFile::new("data", b"").map_err(fail)?;
    let data = dir.path.with_extension("d");
    let marks = dir.path.with_extension("marks");
    std::fs::create_dir_all(&marks).map_err(fail)?;
    let cleanup = Cleanup(vec![data.clone(), marks.clone()]);
    let port = blitzen_tests::cluster::free_port().map_err(fail)?.to_string();
    let data_arg = data.display().to_string();
    let args = ["--data-dir", data_arg.as_str(), "--port", port.as_str()];
    let mut server = start_server(&args).map_err(fail)?;
    let d = driver(&server.addr).with_session("durable-cancel");
    // No agent yet: every task waits in the queue.
    let ids: Vec<_> = (1..=4)
        .map(|i| {
            let script = format!("touch {}/ran-{i}", marks.display());
            d.run(command, CommandSpec::new("sh").arg("-c").arg(script))
        })
        .collect();
    d.wait_accepted(WAIT).map_err(fail)?;
    let cancel = server_command(&[
        "cancel",
        "--server",
        &server.addr,
        "--session",
        "durable-cancel",
        "--task",
        "2",
        "--task",
        "3",
        "--json",
    ])?;
    check(
        cancel.ok && cancel.stdout.contains("\"queued\":2"),
        format!("cancel: {}", cancel.stdout),
    )?;
    blitzen_tests::kill(server.process.pid());
    let _ = server.process.wait_exit(WAIT);
    let server = start_server(&args).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "durable-agent").map_err(fail)?;
    let r = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(r[0].is_ok() && r[3].is_ok(), format!("the others ran: {r:?}"))?;
    check(
        matches!(r[1], Err(TaskError::Cancelled { .. }))
            && matches!(r[2], Err(TaskError::Cancelled { .. })),
        format!("the cancelled ones: {r:?}"),
    )?;
    for i in [2, 3] {
        check(!marks.join(format!("ran-{i}")).exists(), format!("cancelled task {i} ran"))?;
    }
    for i in [1, 4] {
        check(marks.join(format!("ran-{i}")).exists(), format!("task {i} never ran"))?;
    }
    drop(cleanup);
    Ok(())
}

/// Directories removed when dropped.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// GETs a dashboard endpoint: its status code and body.
fn http_get(url: &str) -> Result<(u16, String), Failed> {
    let reply = ureq::get(url).config().http_status_as_error(false).build().call().map_err(fail)?;
    let status = reply.status().as_u16();
    let body = reply.into_body().read_to_string().map_err(fail)?;
    Ok((status, body))
}

/// The value of the sample named `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// The dashboard in a real browser while a driver runs tasks: the numbers move, the workers
/// show what they run, a failure opens with its whole error; `/api/status`, `/metrics` and
/// `/health` answer. With `BLITZEN_SCREENSHOT=PATH` the page is saved there as a PNG.
fn the_dashboard_follows_a_running_cluster_in_a_browser() -> Result<(), Failed> {
    let port = blitzen_tests::cluster::free_port().map_err(fail)?;
    let at = format!("127.0.0.1:{port}");
    let server = start_server(&["--dashboard", &at]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 2, "dash-agent").map_err(fail)?;
    let browser = blitzen_tests::browser::Browser::start(1280, 1100).map_err(fail)?;
    browser.open(&format!("http://{at}/")).map_err(fail)?;
    let live = "return document.getElementById('state').textContent === 'live'";
    check(browser.wait_for(live, WAIT).map_err(fail)?, "the page never went live")?;
    // About ten seconds of work for two workers, submitted once the page follows.
    let d = driver(&server.addr).with_session("dashboard-session");
    let labelled = RunOptions::timeout(Duration::from_millis(300)).with_label("__main__.f2");
    let failed = d.run_with(sleep, 30.0, labelled);
    let ids: Vec<_> = (0..200).map(|_| d.run(sleep, 0.1)).collect();
    let finished = || -> Result<u64, Failed> {
        let text = browser.text("#t-finished").map_err(fail)?;
        text.parse().map_err(|e| fail(format!("finished `{text}`: {e}")))
    };
    let first = finished()?;
    let busy = "return document.querySelectorAll('#agents .worker.busy').length === 2";
    if !browser.wait_for(busy, WAIT).map_err(fail)? {
        let page = browser.eval("return document.body.innerText").map_err(fail)?;
        let (_, status) = http_get(&format!("http://{at}/api/status"))?;
        return Err(format!("the workers never showed busy; the page:\n{page}\n{status}").into());
    }
    let cell = browser.text("#agents .worker.busy").map_err(fail)?;
    // The labelled task shows by its label while it runs.
    let shown = cell.starts_with("sleep #") || cell.starts_with("__main__.f2 #");
    check(shown, format!("a busy worker's cell: {cell}"))?;
    let head = browser.text("#agents .agent .head").map_err(fail)?;
    check(head.contains("cpu ") && head.contains("/2"), format!("the agent's resources: {head}"))?;
    let moved =
        format!("return Number(document.getElementById('t-finished').textContent) > {first}");
    check(browser.wait_for(&moved, WAIT).map_err(fail)?, "the finished count never moved")?;
    let failure = "return document.querySelectorAll('#failures details.failure').length === 1";
    check(browser.wait_for(failure, WAIT).map_err(fail)?, "the failure never appeared")?;
    browser.click("#failures details.failure summary").map_err(fail)?;
    let error = browser.text("#failures details.failure pre").map_err(fail)?;
    check(
        error.contains("timed out") && error.contains("dash-agent"),
        format!("the failure's error in the page: {error}"),
    )?;
    let summary = browser.text("#failures details.failure summary").map_err(fail)?;
    check(summary.starts_with("TimedOut"), format!("the failure's summary: {summary}"))?;
    check(summary.contains("__main__.f2"), format!("the failure's summary: {summary}"))?;
    let session = browser.text("#sessions tr[data-session='dashboard-session']").map_err(fail)?;
    check(session.contains("dashboard-session"), format!("the session's row: {session}"))?;
    if let Some(path) = std::env::var_os("BLITZEN_SCREENSHOT") {
        // Halfway through: a few seconds of history in the chart, both workers busy.
        let halfway = "return Number(document.getElementById('t-finished').textContent) >= 100";
        check(browser.wait_for(halfway, WAIT).map_err(fail)?, "never halfway")?;
        browser.screenshot(Path::new(&path)).map_err(fail)?;
    }
    // The endpoints behind the page.
    let (code, body) = http_get(&format!("http://{at}/health"))?;
    check(code == 200 && body.trim() == "ok", format!("/health: {code} {body}"))?;
    let (code, body) = http_get(&format!("http://{at}/api/status"))?;
    let status: serde_json::Value = serde_json::from_str(&body).map_err(fail)?;
    check(
        code == 200 && status["agents"][0]["host"] == "dash-agent",
        format!("/api/status: {body}"),
    )?;
    let results = d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    check(results.iter().all(Result::is_ok), "every task ran")?;
    let r = d.get_results_with(&[failed], Fetch::default().within(WAIT)).map_err(fail)?;
    check(matches!(r[0], Err(TaskError::TimedOut { .. })), format!("{r:?}"))?;
    let (code, text) = http_get(&format!("http://{at}/metrics"))?;
    check(code == 200, format!("/metrics: {code}"))?;
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).map_err(fail)?;
    let deadline = Instant::now() + WAIT;
    let mut scrape = scrape;
    // The snapshot behind /metrics is made once a second: wait for the last results.
    while sample(&scrape, "blitzen_tasks_finished_total", &[("outcome", "done")]) < Some(200.0) {
        check(
            Instant::now() < deadline,
            format!(
                "/metrics never counted 200 done:
{text}"
            ),
        )?;
        std::thread::sleep(Duration::from_millis(200));
        let (_, text) = http_get(&format!("http://{at}/metrics"))?;
        scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .map_err(fail)?;
    }
    let failed_total = sample(&scrape, "blitzen_tasks_finished_total", &[("outcome", "failed")]);
    check(failed_total == Some(1.0), format!("failed: {failed_total:?}"))?;
    let workers = sample(&scrape, "blitzen_agent_workers", &[("agent", "dash-agent")]);
    check(workers == Some(2.0), format!("workers: {workers:?}"))?;
    let cpus =
        sample(&scrape, "blitzen_agent_resource", &[("agent", "dash-agent"), ("resource", "cpu")]);
    check(cpus == Some(2.0), format!("the agent's CPUs: {cpus:?}"))?;
    let done = sample(
        &scrape,
        "blitzen_session_tasks",
        &[("session", "dashboard-session"), ("state", "done")],
    );
    check(done == Some(200.0), format!("the session's done tasks: {done:?}"))
}

/// A dashboard with a token: the API wants it, the page asks for it and then shows the
/// cluster; a dashboard on a public address without one is refused at start.
fn a_protected_dashboard_asks_for_its_token() -> Result<(), Failed> {
    let token = TempFile::new("token", b"a dashboard token of some length").map_err(fail)?;
    let port = blitzen_tests::cluster::free_port().map_err(fail)?;
    let at = format!("127.0.0.1:{port}");
    let server =
        start_server(&["--dashboard", &at, "--dashboard-token-file", token.arg()]).map_err(fail)?;
    let _agent = start_agent(&server.addr, 1, "token-agent").map_err(fail)?;
    let (code, _) = http_get(&format!("http://{at}/api/status"))?;
    check(code == 401, format!("/api/status without the token: {code}"))?;
    let with_token =
        format!("http://{at}/api/status?token=a%20dashboard%20token%20of%20some%20length");
    // The agent shows in the next snapshot (one a second).
    let deadline = Instant::now() + WAIT;
    while !http_get(&with_token)?.1.contains("token-agent") {
        check(Instant::now() < deadline, "the agent never showed in the status")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = http_get(&format!("http://{at}/metrics?token=wrong-token-of-some-length"))?;
    check(code == 401, format!("/metrics with a wrong token: {code}"))?;
    let (code, _) = http_get(&format!("http://{at}/health"))?;
    check(code == 200, format!("/health is for probes: {code}"))?;
    let (code, body) = http_get(&with_token)?;
    check(code == 200 && body.contains("token-agent"), format!("with the token: {code} {body}"))?;
    let browser = blitzen_tests::browser::Browser::start(1024, 768).map_err(fail)?;
    browser.open(&format!("http://{at}/")).map_err(fail)?;
    let asks = "return !document.getElementById('token-form').hidden";
    check(browser.wait_for(asks, WAIT).map_err(fail)?, "the page never asked for the token")?;
    browser.type_into("#token", "a dashboard token of some length").map_err(fail)?;
    browser.click("#token-form button").map_err(fail)?;
    let shows = "return document.querySelectorAll('#agents .agent').length === 1                  && document.getElementById('state').textContent === 'live'";
    check(browser.wait_for(shows, WAIT).map_err(fail)?, "the page never showed the cluster")?;
    let refused = server_command(&["--port", "0", "--dashboard", "0.0.0.0:0"])?;
    check(
        !refused.ok && refused.stderr.contains("without a token"),
        format!("a public dashboard without a token: {}", refused.stderr),
    )?;
    // The cluster's secret does not stand in for a token: plain HTTP would carry it.
    let secret = TempFile::new("secret", SECRET).map_err(fail)?;
    let args = ["--port", "0", "--secret-file", secret.arg(), "--dashboard", "0.0.0.0:0"];
    let refused = server_command(&args)?;
    check(
        !refused.ok && refused.stderr.contains("not the cluster's secret"),
        format!("a public dashboard with only the cluster's secret: {}", refused.stderr),
    )
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(a_driver_cancels_queued_and_running_tasks_on_a_cluster),
        trial!(status_failures_and_cancel_from_the_shell),
        trial!(a_cancel_on_a_durable_server_survives_a_kill_9),
        trial!(the_dashboard_follows_a_running_cluster_in_a_browser),
        trial!(a_protected_dashboard_asks_for_its_token),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
