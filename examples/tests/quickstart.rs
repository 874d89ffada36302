//! The README's main job runs: the quickstart starts a local cluster, every task of its mixed
//! batch resolves, and each failure reads as the README shows it.

use std::process::Command;

#[test]
fn the_quickstart_runs_its_mixed_batch_to_the_end() {
    // `target/<profile>/examples/quickstart`, built by `cargo test` with the other examples.
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let quickstart = profile_dir.join("examples").join("quickstart");
    assert!(quickstart.exists(), "{} is missing: `cargo test` builds it", quickstart.display());

    let out = Command::new(&quickstart).env_remove("RUST_LOG").output().expect("it starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}:\n{stdout}\n{stderr}", out.status);
    for expected in [
        "with 4 worker processes",
        "primes below   20000: 2262",
        "primes below  380000: 32300",
        "parse    -> 42",
        "parse    -> error: task 26 `parse`",
        "returned an error: invalid digit found in string",
        "panicked at examples/examples/quickstart.rs:",
        "index out of bounds: the len is 3 but the index is 10",
        "the worker process died: killed by signal 6 (SIGABRT)",
        "this worker is about to abort",
        "timed out after 2s; its worker and the processes it started were killed",
        "(exit Some(0))",
        "all done in",
    ] {
        assert!(stdout.contains(expected), "the output lacks {expected:?}:\n{stdout}");
    }
}
