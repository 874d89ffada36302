//! `blitzen-client`'s command line: its flags ([`Args`]) and running an agent with them
//! ([`run`]).

use std::path::PathBuf;
use std::time::Duration;

use blitzen_common::cli::{parse_count, parse_log_level, parse_positive_secs, parse_secs};
use blitzen_common::logging;
use blitzen_common::pool::MAX_WORKERS;
use blitzen_net::Secret;

use blitzen_protocol::devices::Offer;

use crate::{AgentConfig, DEFAULT_PORT};

/// The Blitzen cluster agent: connects to a blitzen-server (waiting for it if it is not up yet,
/// reconnecting if it restarts) and runs its tasks on N worker processes. This stock binary
/// runs the built-in tasks: sleep, echo, command and program (any program).
#[derive(Debug, clap::Parser)]
#[command(name = "blitzen-client", version)]
pub struct Args {
    /// The server: HOST or HOST:PORT.
    #[arg(long, short, value_name = "HOST[:PORT]", default_value = "127.0.0.1")]
    server: String,
    /// Read the server's address, and its certificate's fingerprint, from this file (what
    /// `blitzen-server --address-file` writes) before each attempt to connect, instead of
    /// --server: the agent waits until the file exists, and follows a server that restarts
    /// elsewhere. For Slurm jobs, whose nodes share a file system.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["server", "port", "tls_pin", "tls_ca"])]
    server_file: Option<PathBuf>,
    /// The server's port, when --server does not give one.
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Worker processes to run (1 to 4096). Default: one per CPU.
    #[arg(long, short, value_name = "N", value_parser = |s: &str| parse_count(s, MAX_WORKERS))]
    workers: Option<usize>,
    /// CPUs the running tasks may hold at once: a plain task holds one, a task asking for two
    /// holds two. Default: the number of workers.
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count(s, u32::MAX as usize))]
    cpus: Option<usize>,
    /// Memory the running tasks may hold at once (tasks asking for memory hold what they ask;
    /// the others nothing), e.g. 16GiB, 512MiB, 2000000 (bytes). Default: the machine's.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// Memory for the values tasks share (`Dispatcher::share`): each is sent to this agent
    /// once and kept while it fits, least recently used out first, never one a task held here
    /// takes. E.g. 4GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, default_value = "1GiB")]
    cache_size: u64,
    /// Counted resources this machine offers, as NAME=COUNT pairs separated by commas, e.g.
    /// gpu=2,license=1: a task asking for gpu=1 runs only on an agent offering a GPU, and holds
    /// it while it runs. Each resource's devices are numbered from 0, or named by index:
    /// gpu=0,1 or gpu=[3] (a single number alone is a count); a task is given its own, in
    /// BLITZEN_RESOURCE_NAME (and CUDA_VISIBLE_DEVICES for gpu). Default: none, but the GPUs
    /// `nvidia-smi -L` lists when it is installed.
    #[arg(long, value_name = "NAME=N,...", value_parser = parse_offer)]
    resources: Option<Offer>,
    /// The name this agent reports (in the server's logs and in task errors). Default: the
    /// host name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// File holding the cluster's shared secret (the server's --secret-file, or its
    /// --agent-secret-file). Default: the BLITZEN_SECRET environment variable, if set.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// With a secret, connect UNENCRYPTED (the server must run with --insecure-plaintext too):
    /// anyone on the path can then read and alter every task and result. Default: with a
    /// secret the connection is TLS 1.3, authenticated by the secret.
    #[arg(long, conflicts_with_all = ["tls_pin", "tls_ca"])]
    insecure_plaintext: bool,
    /// Also require the server's certificate to have this SHA-256 fingerprint (the server logs
    /// it at start; 64 hex digits, colons allowed). The secret authenticates the server either
    /// way; a pin also catches a server with the right secret and the wrong certificate.
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "tls_ca")]
    tls_pin: Option<String>,
    /// Also require the server's certificate to be issued by a CA in this PEM file and to name
    /// the --server host (for a server started with --tls-cert).
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// Seconds between heartbeats when there is nothing else to send, both ways: the server
    /// counts the agent lost (and runs its tasks elsewhere) after three intervals without a byte
    /// from it; the agent reconnects after three intervals plus 10 s without a byte from the
    /// server. A large result on a slow link is not silence.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    heartbeat: Duration,
    /// Stop once the server has not been reachable for this many seconds (since the agent
    /// started, or since its connection was lost), checked between attempts to connect (which
    /// are at most 5 s apart). Default: wait for the server, and follow its restarts, until
    /// Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    give_up_after: Option<Duration>,
    /// Leave the cluster once no task has been held for this many seconds: the agent tells
    /// the server (which sends it nothing more), finishes anything sent meanwhile, and exits 0.
    /// For agents started on demand (blitzen-server --autoscale). Default: stay.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    idle_timeout: Option<Duration>,
    /// Stop this many seconds after starting (inside a batch job: its time limit less a
    /// margin): the server sends no task expected to outlast it (by the task's timeout, or how
    /// long tasks of its kind have taken), and at the limit the agent leaves and exits 0,
    /// handing anything still running back to the server to run elsewhere. Default: no limit.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    time_limit: Option<Duration>,
    /// The allocation this agent runs in, as its scheduler names it, shown in the server's
    /// status (an autoscaling server knows its Slurm jobs' agents by it). Default: the
    /// SLURM_JOB_ID environment variable, if set.
    #[arg(long, value_name = "ID")]
    allocation: Option<String>,
    /// Write the log to this file (appended) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug (a line per task), trace, off, or a RUST_LOG-style
    /// directive.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_log_level)]
    log_level: String,
}

fn parse_memory(text: &str) -> Result<u64, String> {
    blitzen_protocol::parse_size(text).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_offer(text: &str) -> Result<Offer, String> {
    blitzen_protocol::devices::parse_offer(text)
}

/// The GPUs `nvidia-smi -L` lists (`GPU 0: NVIDIA A100 …`), by index; none when it is not
/// installed or fails.
fn detected_gpus() -> Vec<u32> {
    let listed = std::process::Command::new("nvidia-smi").arg("-L").output();
    match listed {
        Ok(out) if out.status.success() => gpus_listed(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

fn gpus_listed(listing: &str) -> Vec<u32> {
    let index = |line: &str| line.strip_prefix("GPU ")?.split(':').next()?.trim().parse().ok();
    listing.lines().filter_map(index).collect()
}

/// Parses `args` (the program's name first) as this command line and runs the agent until it
/// stops, printing any error as `name: …`: what `blitzen-client` does, and what a program's own
/// agent mode does (`blitzen::distributed::agent_main`), named `name` in `--help`. `--help`,
/// `--version` and bad flags print and exit, as clap does.
pub fn main_with(
    name: &'static str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Args::command().name(name).bin_name(name);
    if name != "blitzen-client" {
        command = command.about(
            "A Blitzen cluster agent: connects to a blitzen-server (waiting for it if it is not \
             up yet, reconnecting if it restarts) and runs this program's tasks, and the \
             built-in ones, on N worker processes.",
        );
    }
    let matches = command.get_matches_from(args);
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    blitzen_common::cli::finish(name, run(args))
}

/// Runs an agent with the flags `args` until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    logging::install();
    logging::set_loglevel(&args.log_level)?;
    if let Some(path) = &args.log_file {
        logging::set_logfile(path)?;
    }
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
    });
    anyhow::ensure!(!args.heartbeat.is_zero(), "--heartbeat must be more than 0 seconds");
    let server = blitzen_net::parse_server(&args.server, args.port).map_err(anyhow::Error::msg)?;
    let mut config = AgentConfig::new(&server, workers);
    config.server_file = args.server_file.clone();
    let cpus = args.cpus.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let mut offer = args.resources.unwrap_or_default();
    if !offer.counts.iter().any(|(name, _)| name == "gpu") {
        let gpus = detected_gpus();
        if !gpus.is_empty() {
            let shown = gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            tracing::info!(gpus = %shown, "offering the GPUs nvidia-smi lists");
            offer.counts.push(("gpu".into(), gpus.len() as u64));
            offer.counts.sort();
            offer.devices.push(("gpu".into(), gpus));
            offer.devices.sort();
        }
    }
    config.pool.offer(cpus, args.memory, offer.counts);
    config.pool.devices = offer.devices;
    config.heartbeat = args.heartbeat;
    config.cache_size = args.cache_size;
    config.give_up_after = args.give_up_after;
    config.idle_timeout = args.idle_timeout;
    config.time_limit = args.time_limit;
    if let Some(allocation) = args.allocation {
        config.allocation = allocation;
    }
    config.secret = Secret::from_file_or_env(args.secret_file.as_deref())?;
    let (pin, ca) = (args.tls_pin.as_deref(), args.tls_ca.as_deref());
    config.tls = blitzen_net::PeerTls::from_flags(args.insecure_plaintext, pin, ca)?;
    if let Some(name) = args.name {
        config.host = name;
    }
    crate::run_until_signal(config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpus_are_read_from_nvidia_smi_l() {
        let listing =
            "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d3c)\nGPU 1: NVIDIA A100 (UUID: GPU-77aa)\n";
        assert_eq!(super::gpus_listed(listing), [0, 1]);
        assert!(super::gpus_listed("No devices were found\n").is_empty());
    }
}
