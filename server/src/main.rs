//! `blitzen-server`: the task queue and result cache of a Blitzen cluster.
//!
//! Parses flags, then serves until `--duration` passes or Ctrl-C / SIGTERM (telling every
//! driver and agent, and exiting 0), or asks a running server what a subcommand says: `status`,
//! `failures`, `cancel`, `resume`. Everything but the parsing is `blitzen_server::cli`'s.

use std::process::ExitCode;

use blitzen_common::cli::finish;
use blitzen_server::cli::{Cli, observe, serve};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => finish("blitzen-server", serve(cli.serve)),
        Some(command) => observe(command),
    }
}
