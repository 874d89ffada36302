//! The `blitzen` command as a user runs it: the real binary, on a cluster of this machine
//! started for the run and on the real `blitzen-server` and `blitzen-client`, each test with a
//! state directory of its own.

use std::path::PathBuf;
use std::process::{Command, Output};

use blitzen_tests::cluster::{start_agent, start_server};

const BIN: &str = env!("CARGO_BIN_EXE_blitzen");

/// A state directory (and working directory) for one test, removed at its end.
struct State(PathBuf);

impl State {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("blitzen-cli-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a state directory");
        Self(dir)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("BLITZEN_STATE_DIR", &self.0)
            .env_remove("BLITZEN_SECRET")
            .current_dir(&self.0)
            .output()
            .expect("blitzen runs")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    let line = text(bytes);
    serde_json::from_str(line.lines().last().unwrap_or("null")).expect("a JSON line")
}

/// The 200 items of the tests: each prints its number; item 17 fails.
const SCRIPT: &str = "echo item {}; echo to-stderr {} >&2; [ {} != 17 ]";

fn session_of(out: &Output) -> String {
    text(&out.stdout).lines().next().unwrap_or_default().trim().to_string()
}

#[test]
fn an_array_on_this_machine_runs_each_item_and_says_which_failed() {
    let state = State::new("local");
    let out =
        state.run(&["submit", "--workers", "2", "--array", "1-200", "--", "sh", "-c", SCRIPT]);
    assert_eq!(out.status.code(), Some(1), "one item failed: {}", text(&out.stderr));
    let session = session_of(&out);
    assert!(text(&out.stderr).contains("200/200 done, 1 failed"), "{}", text(&out.stderr));
    let item = state.run(&["output", &session, "17"]);
    assert_eq!(
        (text(&item.stdout), text(&item.stderr)),
        ("item 17\n".into(), "to-stderr 17\n".into())
    );
    assert_eq!(item.status.code(), Some(1), "its program failed");
    let said = json(&state.run(&["output", &session, "18", "--json"]).stdout);
    assert_eq!((said["item"].as_u64(), said["stdout"].as_str()), (Some(18), Some("item 18\n")));
    let failures = state.run(&["failures", &session]);
    assert_eq!(text(&failures.stdout), "17: `sh` exited with code 1\n");
    let said = json(&state.run(&["status", &session, "--json"]).stdout);
    assert_eq!((said["done"].as_u64(), said["failed"].as_u64()), (Some(200), Some(1)), "{said}");
    let missing = state.run(&["output", &session, "201"]);
    assert!(text(&missing.stderr).contains("has no item 201"), "{}", text(&missing.stderr));
}

#[test]
fn lines_files_and_items_after_three_colons_are_items() {
    let state = State::new("items");
    std::fs::write(state.0.join("list"), "alpha\n\nbeta\n").expect("a list");
    for name in ["a.txt", "b.txt"] {
        std::fs::write(state.0.join(name), name).expect("a file");
    }
    let out = state.run(&["submit", "--each-line", "list", "--", "sh", "-c", "echo {} > {}.out"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(state.0.join("alpha.out").exists() && state.0.join("beta.out").exists());
    let out = state.run(&["submit", "--each-file", "*.txt", "--json", "--", "gzip", "-k", "{}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(state.0.join("a.txt.gz").exists() && state.0.join("b.txt.gz").exists());
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap_or("{}")).expect("JSON");
    assert_eq!(first["tasks"].as_u64(), Some(2), "{first}");
    let script = "echo $BLITZEN_ITEM > $BLITZEN_ITEM_NUMBER.n";
    let out = state.run(&["submit", "--", "sh", "-c", script, ":::", "x", "y"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(state.0.join("2.n")).ok().as_deref(), Some("y\n"));
}

#[test]
fn bad_input_is_one_clear_line_and_nothing_is_submitted() {
    let state = State::new("bad");
    std::fs::write(state.0.join("empty"), "\n").expect("a file");
    let cases: [(&[&str], &str); 9] = [
        (&["submit", "--array", "5-1", "--", "echo", "{}"], "starts after it ends"),
        (&["submit", "--array", "1-3", "--", "echo", "hi"], "does not say where the item goes"),
        (&["submit", "--each-file", "nothing-*", "--", "echo", "{}"], "no file matches it"),
        (&["submit", "--each-line", "empty", "--", "echo", "{}"], "no lines"),
        (&["submit", "--", "echo", "{}", ":::"], "nothing after :::"),
        (&["submit", "--", "echo", "{}"], "no items"),
        (
            &["submit", "--array", "1-2", "--resources", "gpu=0,1", "--", "echo", "{}"],
            "not which devices",
        ),
        (&["submit", "--array", "1-2", "--resources", "gpu=x", "--", "echo", "{}"], "not a count"),
        (&["output", "nosuch", "1"], "no session `nosuch`"),
    ];
    for (args, said) in cases {
        let out = state.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {args:?}: {stderr}");
    }
    let both = state.run(&["submit", "--array", "1-2", "--each-line", "empty", "--", "echo", "{}"]);
    assert!(text(&both.stderr).contains("cannot be used with"), "{}", text(&both.stderr));
    let sessions = state.0.join("sessions");
    let made = std::fs::read_dir(&sessions).map_or(0, |d| d.count());
    assert_eq!(made, 0, "nothing submitted");
    let help = text(&state.run(&["submit", "--help"]).stdout);
    for flag in [
        "--array",
        "--each-line",
        "--each-file",
        "--cpus",
        "--memory",
        "--resources",
        "--timeout",
        "--retries",
        "--priority",
        "--label",
        "--cwd",
        "--env",
        "--session",
        "--workers",
        "--wait",
        "--json",
        "--server",
        "--secret-file",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// On a real cluster: `submit` returns at once, another "shell" waits, reads an item's output
/// and the failures, and cancels another session.
#[test]
fn a_session_is_followed_from_another_shell() {
    let state = State::new("cluster");
    let server = start_server(&[]).expect("a server");
    let agent = start_agent(&server.addr, 2, "cli-agent").expect("an agent");
    let up = agent.wait_for_log("connected", 1, std::time::Duration::from_secs(30));
    assert!(up, "{}", agent.log_text());
    let addr = server.addr.as_str();
    let out =
        state.run(&["submit", "--server", addr, "--array", "1-200", "--", "sh", "-c", SCRIPT]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let session = session_of(&out);
    let waited = state.run(&["wait", &session]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited.stderr));
    assert_eq!(text(&state.run(&["output", &session, "17"]).stdout), "item 17\n");
    let said = json(&state.run(&["failures", &session, "--json"]).stdout);
    assert_eq!(said.as_array().map(Vec::len), Some(1), "{said}");
    assert_eq!(said[0]["item"].as_u64(), Some(17), "{said}");
    let long = state.run(&["submit", "--server", addr, "--array", "1-100", "--", "sleep", "{}"]);
    let long = session_of(&long);
    let said = json(&state.run(&["cancel", &long, "--json"]).stdout);
    let cancelled = said["queued"].as_u64().unwrap_or(0) + said["running"].as_u64().unwrap_or(0);
    assert_eq!(cancelled, 100, "{said}");
    let said = json(&state.run(&["wait", &long, "--json"]).stdout);
    assert_eq!((said["done"].as_u64(), said["failed"].as_u64()), (Some(100), Some(100)), "{said}");
}
