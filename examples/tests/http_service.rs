//! The async example runs: an axum service whose handlers await tasks on a local cluster
//! answers concurrent requests with their own counts, and a client that hangs up has its task
//! cancelled, not left to run to its 10 s timeout.

use std::process::Command;

#[test]
fn the_http_service_answers_each_request_and_cancels_for_a_client_that_hung_up() {
    // `target/<profile>/examples/http_service`, built by `cargo test` with the other examples.
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let service = profile_dir.join("examples").join("http_service");
    assert!(service.exists(), "{} is missing: `cargo test` builds it", service.display());

    let started = std::time::Instant::now();
    let out = Command::new(&service).arg("--once").env_remove("RUST_LOG").output().expect("starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}:\n{stdout}\n{stderr}", out.status);
    for expected in [
        r#"below      10: 200 {"below":10,"primes":4}"#,
        r#"below  100000: 200 {"below":100000,"primes":9592}"#,
        r#"below  200000: 200 {"below":200000,"primes":17984}"#,
        r#"below  300000: 200 {"below":300000,"primes":25997}"#,
        "a client that hung up: its task ended",
        "(cancelled), 0 results left",
    ] {
        assert!(stdout.contains(expected), "the output lacks {expected:?}:\n{stdout}");
    }
    // Had the task not been cancelled, the example would have waited for its 10 s timeout.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "the hung-up client's task ran on: {stdout}"
    );
}
