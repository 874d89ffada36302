//! Blitzen's benchmark program: the workloads of the performance bar, on the multicore and the
//! distributed paths, each run several times; a table for people and, with `--json`, one JSON
//! line per workload and path for machines.
//!
//! ```text
//! cargo run --release --bin bench -- [--workload W1,W2] [--path multicore|distributed]
//!                                          [--runs 5] [--json] [--baseline pool.jsonl]
//! ```
//!
//! Everything runs on this machine over loopback. The distributed path starts its own server and
//! agents as child processes (this program re-executed in another role, see `procs`) and stops
//! them when done; `bench/pool_baseline.py` measures Python's `multiprocessing.Pool` on the
//! same workloads, and `--baseline` puts its figures beside ours.
//!
//! - `workloads`: W1–W6 in `workloads/mod.rs`, with idle cost and start-up W7–W8 (`idle`),
//!   the data directory's W9–W11 (`durable`), the side-by-side clusters of W12–W15 (`side_by_side`), W16's 10M tasks
//!   (`at_scale`), W17's thousand agents (`many_agents`), the async face's W18–W20
//!   (`awaits`) and the graphs' W21–W23 (`graphs`) in files of their own.
//! - `procs`: the server, agent and driver child processes.
//! - `usage`: CPU time and memory of processes, read from `/proc`.
//! - `stats`: medians and percentiles.
//! - `report`: the bars, the table, the JSON lines, the baseline.

mod procs;
mod report;
mod stats;
mod usage;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use report::{Baseline, Machine, Record};

/// What goes wrong in the benchmark, as a sentence.
pub type Result<T> = std::result::Result<T, String>;
use workloads::Workload;

/// Measures Blitzen's overhead: throughput, latency, scaling, payloads, queue memory, fan-in,
/// idle cost and start-up, on the multicore and distributed paths.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Workloads to run, comma-separated (W1 … W23); all by default.
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,...")]
    workload: Vec<Workload>,
    /// Run one path only; both by default.
    #[arg(long, value_enum)]
    path: Option<Path>,
    /// Runs per workload; the table shows their median, minimum and maximum.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print one JSON line per workload and path instead of the table.
    #[arg(long)]
    json: bool,
    /// JSON lines of `bench/pool_baseline.py` (multiprocessing.Pool): the table gets a column
    /// with our figure as a multiple of the baseline's.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
}

/// Where the tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Path {
    /// `MulticoreDispatcher`: worker processes of this program.
    Multicore,
    /// `DistributedDispatcher`: a server and agents as separate processes, over loopback.
    Distributed,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Multicore => "multicore",
            Path::Distributed => "distributed",
        }
    }
}

fn main() -> ExitCode {
    blitzen::worker_main();
    if let Some(code) = procs::child_role(workloads::role) {
        return code;
    }
    let args = Args::parse();
    // Notices such as "tasks are waiting" (W5 queues tasks for no agent on purpose) would
    // drown the table.
    if let Err(e) = blitzen::logging::set_loglevel("error") {
        eprintln!("bench: {e}");
    }
    let baseline = match args.baseline.as_deref().map(Baseline::load).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let workloads = if args.workload.is_empty() { Workload::ALL.to_vec() } else { args.workload };
    let paths = match args.path {
        Some(p) => vec![p],
        None => vec![Path::Multicore, Path::Distributed],
    };
    let machine = Machine::this();
    if !args.json {
        println!("{} runs each on {machine}", args.runs);
        report::print_header(baseline.is_some());
    }
    let mut failed = false;
    for workload in workloads {
        for &path in &paths {
            if !workload.runs_on(path) {
                continue;
            }
            match workloads::measure(workload, path, args.runs) {
                Ok(measured) => {
                    let record = Record::new(workload, path, measured, &machine);
                    if args.json {
                        println!("{}", record.json());
                    } else {
                        record.print_row(baseline.as_ref());
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("bench: {} on {}: {e}", workload.name(), path.name());
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
