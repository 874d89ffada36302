//! The user's own client program (`blitzen-own-client`, this package's binary) serves the tasks
//! of a library crate it names only in `blitzen::tasks![]`, built in debug and in release mode,
//! against the real `blitzen-server`.

use std::path::PathBuf;
use std::time::Duration;

use blitzen::Fetch;
use blitzen_test_tasks::{geometry::volume, reverse_words, square};
use blitzen_tests::cluster::{build_release, driver, start_program, start_server};
use blitzen_tests::{check, fail, trial};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

/// The tasks of a library crate, named only in `blitzen::tasks![]` by a client program, are
/// served in a debug and in a release build; the agent and the server name them in their logs.
fn tasks_of_a_library_crate_are_served_in_debug_and_release() -> Result<(), Failed> {
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_blitzen-own-client"));
    let release = build_release(env!("CARGO_PKG_NAME"), "blitzen-own-client").map_err(fail)?;
    for client in [debug, release] {
        let server = start_server(&[]).map_err(fail)?;
        let mut program = std::process::Command::new(&client);
        program.args([server.addr.as_str(), "2"]);
        let agent = start_program(program, "library-client").map_err(fail)?;
        let d = driver(&server.addr);
        let a = d.run(square, 7);
        let b = d.run(volume, (2, 3, 4));
        let c = d.run(reverse_words, "served from a library".into());
        let fetch = Fetch::default().within(WAIT);
        let got = (d.get_results_with(&[a], fetch), d.get_results_with(&[b], fetch));
        let words = d.get_results_with(&[c], fetch).map_err(fail)?;
        let (a, b) = (got.0.map_err(fail)?, got.1.map_err(fail)?);
        let what = client.display();
        check(a == [Ok(49)] && b == [Ok(24)], format!("{what}: {a:?} {b:?}"))?;
        check(words == [Ok("library a from served".to_string())], format!("{what}: {words:?}"))?;
        let (agent_log, server_log) = (agent.log_text(), server.process.log_text());
        for name in ["square", "volume", "reverse_words", "echo"] {
            check(
                agent_log.contains(name),
                format!("{what}: agent log lacks {name}:\n{agent_log}"),
            )?;
            check(
                server_log.lines().any(|l| l.contains("agent connected") && l.contains(name)),
                format!("{what}: server log lacks {name}:\n{server_log}"),
            )?;
        }
    }
    Ok(())
}

/// Without its arguments the program says how to call it and fails.
fn without_arguments_it_prints_its_usage() -> Result<(), Failed> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blitzen-own-client"))
        .output()
        .map_err(fail)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), "exit status")?;
    check(stderr.contains("usage: blitzen-own-client SERVER WORKERS"), stderr)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        trial!(tasks_of_a_library_crate_are_served_in_debug_and_release),
        trial!(without_arguments_it_prints_its_usage),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
