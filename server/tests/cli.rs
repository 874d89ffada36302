//! The `blitzen-server` binary's command line, run as a real process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blitzen-server");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--address-file",
        "--port",
        "--duration",
        "--timeout",
        "--task-limit",
        "--result-ttl",
        "--max-results",
        "--session-ttl",
        "--handshake-timeout",
        "--insecure",
        "--max-attempts",
        "--deadline-grace",
        "--secret-file",
        "--agent-secret-file",
        "--driver-secret-file",
        "--log-file",
        "--log-level",
        "--dashboard",
        "--dashboard-token-file",
        "--help",
        "--version",
        "status",
        "failures",
        "cancel",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
    for (command, flags) in [
        (
            "status",
            &["--server", "--port", "--secret-file", "--json", "--timeout", "--tls-pin"][..],
        ),
        ("failures", &["--session", "--json"][..]),
        ("cancel", &["--session", "--task", "--all", "--json"][..]),
    ] {
        let out = Command::new(BIN).args([command, "--help"]).output().expect("runs");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{command} --help does not mention {flag}:\n{help}");
        }
    }
}

#[test]
fn subcommands_refuse_bad_input_and_say_why_in_json() {
    for (args, expect) in [
        (vec!["cancel", "--session", "s"], "--task"),
        (vec!["cancel", "--session", "s", "--task", "1", "--all"], "--all"),
        (vec!["status", "--server", "127.0.0.1:99999"], "out of range"),
        (vec!["status", "--tls-pin", "abc"], "fingerprint"),
        (vec!["--port", "0", "status"], "status"),
    ] {
        let out =
            Command::new(BIN).args(&args).env_remove("BLITZEN_SECRET").output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: stderr lacks `{expect}`:\n{stderr}");
    }
    // Nobody listens there: one JSON value on stdout, exit code 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let addr = port.expect("a free port").to_string();
    let out = Command::new(BIN)
        .args(["status", "--server", &addr, "--json", "--timeout", "1"])
        .env_remove("BLITZEN_SECRET")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON value");
    let error = value["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot reach the server"), "{stdout}");
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, expect) in [
        (vec!["--duration", "soon"], "not a number of seconds"),
        (vec!["--port", "99999"], "99999"),
        (vec!["--log-level", "blitzen=loud"], "invalid log level"),
        (vec!["--bind", "0.0.0.0", "--port", "0"], "--secret-file"),
        (vec!["--secret-file", "/nonexistent/secret"], "/nonexistent/secret"),
        (vec!["--agent-secret-file", "Cargo.toml"], "only one role"),
        (vec!["--max-attempts", "0"], "--max-attempts"),
    ] {
        let out = Command::new(BIN).args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: stderr lacks `{expect}`:\n{stderr}");
    }
}

#[test]
fn a_short_secret_in_the_environment_is_refused() {
    let out = Command::new(BIN)
        .args(["--port", "0"])
        .env("BLITZEN_SECRET", "short")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("BLITZEN_SECRET") && stderr.contains("at least 16"), "{stderr}");
}

#[test]
fn duration_ends_the_server_cleanly_and_on_time() {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--port", "0", "--duration", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "took {took:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("listening on 127.0.0.1:"));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = Command::new(BIN).args(["--port", &port, "--duration", "5"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
}

#[test]
fn log_file_receives_the_log() {
    let dir = std::env::temp_dir().join(format!("blitzen-server-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("server.log");
    let out = Command::new(BIN)
        .args(["--port", "0", "--duration", "0.2", "--log-level", "debug", "--log-file"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let log = std::fs::read_to_string(&path).expect("log file written");
    assert!(log.contains("serving") && log.contains("stopped"), "{log}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("serving"), "logged to stderr too");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started with a low soft limit of open files, the server raises it to the hard limit: each
/// agent and driver is a socket, and 1,000 agents need more than the usual 1,024.
#[test]
fn the_server_raises_its_open_files_limit_for_many_agents() {
    use std::io::BufRead;
    let mut child = Command::new("sh")
        .args(["-c", &format!("ulimit -Sn 256 && exec {BIN} --port 0 --duration 3")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout).read_line(&mut line).expect("a line");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on"), "{line}");
    let open: Vec<&str> = (limits.lines())
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect())
        .unwrap_or_default();
    assert!(open.len() == 2 && open[0] == open[1] && open[0] != "256", "{limits}");
}
