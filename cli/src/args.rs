//! The command line: `blitzen submit` and the commands that follow a session from any shell.

use std::path::PathBuf;
use std::time::Duration;

/// Run a program once per item — the numbers of an array, the lines of a file, the files a
/// pattern matches, or items after `:::` — on this machine's cores (with no --server) or on a
/// Blitzen cluster, and follow the run from any shell: wait, status, output, failures, cancel.
#[derive(Debug, clap::Parser)]
#[command(name = "blitzen", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Submit one task per item; print the session's name and exit (--wait: wait for them).
    Submit(Box<Submit>),
    /// Wait for a session's tasks, showing progress; the exit status is 1 if any failed.
    Wait(Follow),
    /// How many of a session's tasks are done, failed, running and queued.
    Status(Follow),
    /// What item ITEM printed (its stdout, then its stderr), once it has finished.
    Output(Output),
    /// The items that failed, and why.
    Failures(Follow),
    /// Cancel a session's unfinished tasks (a running one has its program killed).
    Cancel(Follow),
}

/// Where the cluster is, when the session's own record does not say.
#[derive(Debug, clap::Args)]
pub struct Cluster {
    /// The cluster's server, HOST:PORT. Default: for `submit`, a cluster of this machine's
    /// cores started for the run (which then waits); for the others, the session's.
    #[arg(long, short, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// File holding the cluster's shared secret. Default: the BLITZEN_SECRET environment
    /// variable, if set.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Submit {
    #[command(flatten)]
    pub cluster: Cluster,
    /// One task per number of A-B (e.g. 1-1000), the item being the number.
    #[arg(long, value_name = "A-B", group = "source")]
    pub array: Option<String>,
    /// One task per line of FILE (- for standard input), empty lines left out.
    #[arg(long, value_name = "FILE", group = "source")]
    pub each_line: Option<PathBuf>,
    /// One task per file matching the pattern (e.g. '*.txt'; quote it), in sorted order.
    #[arg(long, value_name = "GLOB", group = "source")]
    pub each_file: Option<String>,
    /// CPUs each task holds while it runs.
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory each task holds, which is also its limit, e.g. 4GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Counted resources each task holds, e.g. gpu=1: it runs where they are free, and is
    /// given its own devices (CUDA_VISIBLE_DEVICES, BLITZEN_RESOURCE_GPU).
    #[arg(long, value_name = "NAME=N,...")]
    pub resources: Option<String>,
    /// Kill a task's program after this many seconds of running (it then fails).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// Run a task again, up to N times, when its program crashes its worker or times out.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Higher first among the tasks waiting to start (see the docs' Priorities).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// What the tasks are shown as in the cluster's status, failures and dashboard.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// The directory the program runs in. Default: this one.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// A variable set for the program (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The session's name. Default: a new one.
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
    /// Worker processes of the cluster started for the run (no --server). Default: one per CPU.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Wait for the tasks, showing progress; the exit status is 1 if any failed.
    #[arg(long)]
    pub wait: bool,
    /// The program and its arguments, `{}` standing for the item (also in $BLITZEN_ITEM), then
    /// optionally `:::` and the items, as GNU parallel takes them.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]... [::: ITEMS...]")]
    pub program: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct Follow {
    /// The session (what `submit` printed).
    pub session: String,
    #[command(flatten)]
    pub cluster: Cluster,
}

#[derive(Debug, clap::Args)]
pub struct Output {
    /// The session (what `submit` printed).
    pub session: String,
    /// The item: its number in an --array, else its place among the items, from 1.
    pub item: u64,
    #[command(flatten)]
    pub cluster: Cluster,
}

fn parse_size(text: &str) -> Result<u64, String> {
    blitzen::parse_size(text).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a usable number of seconds"))
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}
