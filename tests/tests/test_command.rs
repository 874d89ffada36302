//! `./test.sh` on a machine where it cannot install what the tests need: it stops before the
//! build with one line that says what is missing, why, and the command to run by hand.
//!
//! The machine is simulated with stand-ins on `PATH` (`id` for the user, `apt-get` for the
//! package manager, `cargo` that records how it was called), and the browser is named where none
//! is, so the script takes the install path without installing anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").into()
}

/// A folder of stand-in commands, removed when dropped.
struct Shims(PathBuf);

impl Shims {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("test-command-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("shim folder");
        Self(dir)
    }

    fn add(&self, name: &str, script: &str) {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("shim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// `cargo` that answers `cargo nextest --version` and records every call.
    fn add_cargo(&self) {
        let calls = self.calls();
        self.add("cargo", &format!("echo \"$*\" >> '{}'\nexit 0", calls.display()));
    }

    fn calls(&self) -> PathBuf {
        self.0.join("cargo-calls")
    }

    /// Runs `./test.sh` with these stand-ins first on `PATH`, and no browser.
    fn run_test_sh(&self) -> Output {
        let path = format!("{}:/usr/bin:/bin", self.0.display());
        Command::new("bash")
            .arg(workspace().join("test.sh"))
            .env("PATH", path)
            .env("CHROMIUM", self.0.join("no-chromium"))
            .env("CHROMEDRIVER", self.0.join("no-chromedriver"))
            .output()
            .expect("bash runs test.sh")
    }
}

impl Drop for Shims {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The script's last line, once it stopped with 2 having built nothing: the one that says what
/// cannot be installed and the command to run by hand.
fn stopped_before_the_build(shims: &Shims, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let calls = std::fs::read_to_string(shims.calls()).unwrap_or_default();
    assert!(
        calls.lines().all(|call| call.starts_with("nextest --version")),
        "it ran cargo beyond asking for nextest: {calls}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("test.sh: ") && last.contains("run this by hand"), "{stderr}");
    last.to_string()
}

#[test]
fn without_root_it_stops_before_the_build_with_the_command_to_run() {
    let shims = Shims::new("no-root");
    shims.add_cargo();
    shims.add("id", "echo 1000");
    shims.add("sudo", "echo 'sudo: a password is required' >&2\nexit 1");
    let out = shims.run_test_sh();
    let line = stopped_before_the_build(&shims, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line, not:\n{stderr}");
    for expected in [
        "the dashboard's tests drive a real browser",
        "needs root",
        "sudo apt-get update && sudo apt-get install -y chromium chromium-driver",
        "then ./test.sh again",
    ] {
        assert!(line.contains(expected), "{expected:?} missing from: {line}");
    }
}

#[test]
fn without_a_network_it_stops_before_the_build_with_apt_gets_last_words() {
    let shims = Shims::new("no-network");
    shims.add_cargo();
    shims.add("id", "echo 0");
    shims.add(
        "apt-get",
        "echo \"Err:1 http://deb.debian.org/debian bookworm InRelease\"\n\
         echo \"  Temporary failure resolving 'deb.debian.org'\"\nexit 100",
    );
    let out = shims.run_test_sh();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stopped_before_the_build(&shims, &out);
    assert!(
        stderr.starts_with("test.sh: installing chromium chromium-driver from Debian's packages"),
        "it says what it installs and why:\n{stderr}"
    );
    assert!(stderr.contains("Temporary failure resolving"), "apt-get's words:\n{stderr}");
    for expected in [
        "apt-get could not install chromium chromium-driver",
        "run this by hand, then ./test.sh again: apt-get update && apt-get install -y chromium \
         chromium-driver",
    ] {
        assert!(line.contains(expected), "{expected:?} missing from: {line}");
    }
}
