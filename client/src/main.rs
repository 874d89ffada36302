//! `blitzen-client`: gives a Blitzen cluster the worker processes of this machine.
//!
//! Parses flags, then runs the agent until Ctrl-C or SIGTERM (`blitzen_client::cli`). The
//! workers are this binary re-executed, so `worker_main` comes first.

use std::process::ExitCode;

fn main() -> ExitCode {
    blitzen_common::worker_main();
    blitzen_client::cli::main_with("blitzen-client", std::env::args_os())
}
