//! The `blitzen-client` binary's command line, run as a real process.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_blitzen-client");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--server",
        "--server-file",
        "--port",
        "--workers",
        "--cpus",
        "--memory",
        "--resources",
        "--name",
        "--heartbeat",
        "--give-up-after",
        "--secret-file",
        "--log-file",
        "--log-level",
        "--help",
        "--version",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, expect) in [
        (vec!["--workers", "0"], "at least 1"),
        (vec!["--workers", "many"], "invalid value"),
        (vec!["--heartbeat=-3"], "not a usable number of seconds"),
        (vec!["--heartbeat", "0"], "more than 0"),
        (vec!["--secret-file", "/nonexistent/secret"], "/nonexistent/secret"),
        (vec!["--secret-file", "Cargo.toml", "--workers", "0"], "at least 1"),
        (vec!["--cpus", "0"], "at least 1"),
        (vec!["--memory", "4 gigs"], "unknown unit"),
        (vec!["--memory", "0"], "zero bytes"),
        (vec!["--resources", "gpu=0"], "at least 1"),
        (vec!["--resources", "gpu"], "not NAME=COUNT"),
        (vec!["--resources", "gpu=1,gpu=2"], "named twice"),
        (vec!["--resources", "9lives=1"], "not a resource name"),
        (vec!["--resources", "gpu=0,0"], "names device 0 twice"),
        (vec!["--resources", "gpu=[1"], "not a count"),
        (vec!["--resources", "gpu=0,x"], "not a device index"),
        (vec!["--server-file", "f", "--server", "h"], "cannot be used with"),
        (vec!["--give-up-after=-1"], "not a usable number of seconds"),
    ] {
        let out = Command::new(BIN).args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expect), "{args:?}: stderr lacks `{expect}`:\n{stderr}");
    }
}

#[test]
fn an_agent_told_to_give_up_stops_when_no_server_answers() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let out = Command::new(BIN)
        .args(["--server", &format!("127.0.0.1:{port}"), "--workers", "1"])
        .args(["--give-up-after", "0.5"])
        .env_remove("BLITZEN_SECRET")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}:\n{stderr}", out.status);
    assert!(stderr.contains("give_up_after=0.5s"), "{stderr}");
    assert!(stderr.contains("not been reachable for the give-up time: stopping"), "{stderr}");
    assert!(stderr.contains("agent stopped"), "{stderr}");
}
