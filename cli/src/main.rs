//! `blitzen`: a program run once per item, on this machine's cores or a cluster; see
//! [`args`] for the command line.
//!
//! - `args`: the subcommands and their flags;
//! - `items`: the items (an array, a file's lines, files, `:::` items) and each one's program;
//! - `run`: `submit`, and collecting results with progress;
//! - `follow`: `wait`, `status`, `output`, `failures`, `cancel` from any shell;
//! - `session`: what this machine keeps of a session.

mod args;
mod follow;
mod items;
mod run;
mod session;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The cluster started for a run re-executes this program as its workers.
    blitzen::worker_main();
    let args = args::Args::parse();
    // The cluster's own log is for its operators: here only warnings (RUST_LOG says otherwise).
    if std::env::var_os("RUST_LOG").is_none() {
        let _ = blitzen::logging::set_loglevel("warn");
    }
    let done = match args.command {
        args::Command::Submit(submit) => run::submit(*submit),
        args::Command::Wait(follow) => follow::wait(follow),
        args::Command::Status(follow) => follow::status(follow),
        args::Command::Output(output) => follow::output(output),
        args::Command::Failures(follow) => follow::failures(follow),
        args::Command::Cancel(follow) => follow::cancel(follow),
    };
    match done {
        Ok(code) => code,
        Err(e) => {
            eprintln!("blitzen: {e}");
            ExitCode::from(2)
        }
    }
}
