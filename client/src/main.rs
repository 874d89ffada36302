//! `blitzen-client`: gives a Blitzen cluster the worker processes of this machine.
//!
//! Parses flags, then runs the agent until Ctrl-C or SIGTERM (`blitzen_client::cli`). The
//! workers are this binary re-executed, so `worker_main` comes first.

use std::process::ExitCode;

use blitzen_client::cli::{Args, run};
use blitzen_common::cli::finish;
use clap::Parser;

fn main() -> ExitCode {
    blitzen_common::worker_main();
    let args = Args::parse();
    finish("blitzen-client", run(args))
}
