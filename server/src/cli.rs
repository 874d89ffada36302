//! `blitzen-server`'s command line: its flags ([`Cli`]), serving with them ([`serve`]), and its
//! subcommands, which ask a running server ([`observe`]: `status`, `failures`, `cancel`,
//! `resume`; the
//! filters and the rendering are `crate::observe`'s).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use blitzen_common::cli::{
    error_text, parse_log_level, parse_positive_secs, parse_secs, parse_span,
};
use blitzen_common::logging;
use blitzen_net::{PeerTls, Secret, Secrets};
use blitzen_protocol::cluster::FromObserver;

use crate::autoscale::AutoscaleConfig;
use crate::observe::{ask, only_task, render};
use crate::{DEFAULT_PORT, ServerConfig, serve_until};

/// The Blitzen cluster server: holds the task queue and the result cache. Drivers submit tasks
/// to it; `blitzen-client` agents connect to it and run the tasks on their worker processes.
///
/// Without a subcommand it serves; `status`, `failures`, `cancel` and `resume` ask a running
/// server.
#[derive(Debug, clap::Parser)]
#[command(name = "blitzen-server", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    // Not doc comments: clap would print them in `--help`.
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: Option<Command>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub serve: Args,
}

/// Questions and orders for a running server.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the cluster at a glance: agents (workers, busy workers, tasks done and failed,
    /// last heard from), sessions (queued, running, done, failed, cancelled, throughput), and
    /// the most recent failures with their full error.
    Status {
        /// Show only the failures and the running tasks of this name (a Rust task's name, or a
        /// Python function's `module.qualname`, e.g. `__main__.f2`).
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        #[allow(missing_docs)]
        #[command(flatten)]
        to: Target,
    },
    /// List a session's failed tasks (the server keeps its last 1,000), each with its full
    /// error: panic message and location, exit signal, stderr tail, host.
    Failures {
        /// The session (see `status`).
        #[arg(long)]
        session: String,
        /// Only the failures of tasks of this name (see `status --task`).
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        #[allow(missing_docs)]
        #[command(flatten)]
        to: Target,
    },
    /// Cancel tasks of a session: queued ones end Cancelled at once, running ones have their
    /// worker killed (SIGTERM, then SIGKILL). A task that already finished keeps its result.
    Cancel {
        /// The session (see `status`).
        #[arg(long)]
        session: String,
        /// The driver's id of a task to cancel (repeat for several).
        #[arg(long = "task", value_name = "ID", required_unless_present = "all")]
        tasks: Vec<u64>,
        /// Cancel every task of the session not finished yet.
        #[arg(long, conflicts_with = "tasks")]
        all: bool,
        #[allow(missing_docs)]
        #[command(flatten)]
        to: Target,
    },
    /// Make a paused autoscaler (--autoscale) ask for agents again, once what made its
    /// submissions fail is fixed: its failures are forgotten, and any back-off is over.
    Resume {
        #[allow(missing_docs)]
        #[command(flatten)]
        to: Target,
    },
}

/// The flags of serving.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Anything but a loopback address needs a secret (or --insecure):
    /// without one, anyone who can reach the port can run programs on the agents.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// File holding the cluster's shared secret (at least 16 bytes; surrounding whitespace is
    /// ignored). Agents and drivers must prove they know it. Default: the BLITZEN_SECRET
    /// environment variable, if set.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Secret for agents only, overriding --secret-file for them.
    #[arg(long, value_name = "PATH")]
    agent_secret_file: Option<PathBuf>,
    /// Secret for drivers only, overriding --secret-file for them: give worker hosts the
    /// agents' secret and they cannot submit work.
    #[arg(long, value_name = "PATH")]
    driver_secret_file: Option<PathBuf>,
    /// Port to listen on (0: any free port; the address is printed on stdout).
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Serve this many seconds, then shut down cleanly: connected drivers and agents are told,
    /// and unfinished tasks end with an error at their drivers. Default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Timeout of tasks submitted without one, in seconds, counted from a task's start on a
    /// worker. Default: none.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    timeout: Option<Duration>,
    /// Most tasks held at once (queued or running); further submissions are refused with an
    /// error at their driver.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    task_limit: usize,
    /// Seconds a result nobody fetched is kept before it is dropped (logged).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "3600")]
    result_ttl: Duration,
    /// Most results nobody fetched that are kept; the oldest are dropped beyond it (logged).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_results: usize,
    /// Seconds a driver that left without a goodbye keeps its session once nothing is held for
    /// it any more, for it (or another process) to reconnect or attach to.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "120")]
    session_ttl: Duration,
    /// Seconds a new connection has to introduce itself before it is closed.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    handshake_timeout: Duration,
    /// Times a task is handed out before it ends with an error, when the agents running it keep
    /// vanishing (disconnecting, or missing their heartbeats).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Seconds past a task's timeout after which the server settles it (TaskError::Lost) when
    /// its agent, though alive, has not answered: the agent enforces timeouts itself, this is
    /// the backstop.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    deadline_grace: Duration,
    /// Keep the server's state in this directory (created if missing): after a restart — even
    /// kill -9 — with the same directory, the server keeps its identity, its sessions, their
    /// queued tasks and the results not yet fetched. A submission is saved before the driver
    /// hears it accepted, a result before the agent hears it received. Default: in memory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: after a restart, seconds the restored tasks wait at most for the agents
    /// connected before it to re-attach with the tasks they are running (which then finish once,
    /// not rerun): seconds of this server's uptime, summed over restarts that come before it is
    /// over. Once every such agent is back or known to have ended, or the time is up, the rest
    /// are queued again.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    reattach_grace: Duration,
    /// Allow listening on a non-loopback address without a secret.
    #[arg(long)]
    insecure: bool,
    /// With a secret, leave connections UNENCRYPTED: anyone on the path can then read every
    /// task's arguments and results, and alter them. Agents and drivers must say the same.
    /// Default: with a secret every connection is TLS 1.3, authenticated by the secret.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Present this certificate chain (PEM) instead of a self-signed certificate, for sites
    /// whose peers check certificates against a CA (blitzen-client --tls-ca). Needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key", conflicts_with = "insecure_plaintext")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the web dashboard here (for example 127.0.0.1:8265): the cluster live in a
    /// browser, with /api/status (JSON), /api/events (server-sent events), /metrics
    /// (Prometheus) and /health. Any address but loopback needs --dashboard-token-file, which
    /// the page then asks for.
    #[arg(long, value_name = "ADDR:PORT")]
    dashboard: Option<std::net::SocketAddr>,
    /// File holding the dashboard's token (at least 16 bytes), asked of every visitor. Make it
    /// its own, not the cluster's secret: the dashboard speaks plain HTTP, so the token
    /// crosses the network in the clear (it only lets one watch).
    #[arg(long, value_name = "PATH", requires = "dashboard")]
    dashboard_token_file: Option<PathBuf>,
    /// Once listening, write where agents find this server to PATH: `server=HOST:PORT` (the
    /// --bind address, or this machine's host name with --bind 0.0.0.0) and, when
    /// connections are encrypted, `fingerprint=…` of its certificate. Agents started with
    /// `--server-file PATH` read it (on a shared file system, as in a Slurm job). The file is
    /// replaced whole at each start.
    #[arg(long, value_name = "PATH")]
    address_file: Option<PathBuf>,
    /// Ask a scheduler for agents as ready tasks need them (repeated failures pause it until
    /// `blitzen-server resume`). `slurm`: each agent is a batch job
    /// (sbatch) of --agent-workers CPUs running blitzen-client, which leaves after
    /// --idle-timeout without a task and before --agent-time-limit; sbatch options (a
    /// partition, an account) follow `--` at the end. Needs --address-file on a file system the
    /// nodes share, and the agents' secret as a file they can read (--secret-file or
    /// --agent-secret-file). The jobs it holds are cancelled when the server stops.
    #[arg(long, value_name = "SCHEDULER", value_enum)]
    autoscale: Option<Scheduler>,
    /// With --autoscale: agents held at most at once, pending and running.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    max_agents: u32,
    /// With --autoscale: worker processes of each agent (the CPUs each job asks for).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    agent_workers: u32,
    /// With --autoscale: each job's time limit (sbatch --time), as seconds or with a unit (90s,
    /// 30m, 1h). Its agent takes no task expected to outlast it and leaves a margin before it
    /// (a tenth of it, between 2 s and 60 s).
    #[arg(long, value_name = "SPAN", value_parser = parse_span, default_value = "1h")]
    agent_time_limit: Duration,
    /// With --autoscale: an agent with no task for this long leaves, and its job ends.
    #[arg(long, value_name = "SPAN", value_parser = parse_span, default_value = "5m")]
    idle_timeout: Duration,
    /// With --autoscale: time between two decisions (each lists the jobs with squeue).
    #[arg(long, value_name = "SPAN", value_parser = parse_span, default_value = "5s")]
    autoscale_interval: Duration,
    /// With --autoscale: the agents' program, and any arguments before the flags of
    /// blitzen-client it is given, as words separated by spaces: "blitzen-py-client" for
    /// Python calls, "./my-app agent" for a Rust program's own tasks (blitzen::distributed::
    /// agent_main). Default: the blitzen-client beside this binary, else on the PATH.
    #[arg(long, value_name = "COMMAND")]
    agent_program: Option<String>,
    /// With --autoscale: print each sbatch line it would run on stdout, and submit nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --autoscale: options for every sbatch (after `--`).
    #[arg(last = true, value_name = "SBATCH_OPTIONS")]
    scheduler_args: Vec<String>,
    /// Write the log to this file (appended) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug (a line per task), trace, off, or a RUST_LOG-style
    /// directive.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_log_level)]
    log_level: String,
}

/// A scheduler `--autoscale` asks for agents.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Scheduler {
    /// Slurm: each agent a batch job (sbatch), listed with squeue, cancelled with scancel.
    Slurm,
}

/// The autoscaler's settings from the flags, when there is one.
fn autoscale(args: &Args) -> anyhow::Result<Option<AutoscaleConfig>> {
    let Some(Scheduler::Slurm) = args.autoscale else {
        anyhow::ensure!(
            !args.dry_run && args.scheduler_args.is_empty(),
            "--dry-run and options after -- are for --autoscale"
        );
        return Ok(None);
    };
    let Some(address_file) = &args.address_file else {
        anyhow::bail!(
            "--autoscale needs --address-file PATH, on a file system the nodes share: its agents \
             find the server there"
        );
    };
    let secret_file = args.agent_secret_file.as_ref().or(args.secret_file.as_ref());
    anyhow::ensure!(
        secret_file.is_some() || std::env::var_os("BLITZEN_SECRET").is_none(),
        "--autoscale needs the agents' secret as a file they can read (--secret-file or \
         --agent-secret-file), not BLITZEN_SECRET"
    );
    if args.bind.is_loopback() {
        tracing::warn!(
            bind = %args.bind,
            "--autoscale with a loopback --bind: only agents on this machine can reach the server \
             (--bind 0.0.0.0, with the secret, for agents on other nodes)"
        );
    }
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let agent_command: Vec<String> = match &args.agent_program {
        Some(line) => {
            let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
            anyhow::ensure!(!words.is_empty(), "--agent-program is empty");
            // The jobs start in the submission folder: a relative path is made whole.
            if words[0].contains('/') {
                words[0] = absolute(&PathBuf::from(&words[0])).display().to_string();
            }
            words
        }
        None => {
            vec![crate::autoscale::slurm::default_agent_program().display().to_string()]
        }
    };
    Ok(Some(AutoscaleConfig {
        max_agents: args.max_agents,
        agent_workers: args.agent_workers,
        agent_time_limit: args.agent_time_limit,
        idle_timeout: args.idle_timeout,
        interval: args.autoscale_interval,
        dry_run: args.dry_run,
        scheduler_args: args.scheduler_args.clone(),
        agent_command,
        address_file: absolute(address_file),
        secret_file: secret_file.map(absolute),
    }))
}

/// The secrets from the flags, or from BLITZEN_SECRET.
fn secrets(args: &Args) -> anyhow::Result<Secrets> {
    let shared = Secret::from_file_or_env(args.secret_file.as_deref())?;
    let agents = args.agent_secret_file.as_ref().map(Secret::from_file).transpose()?;
    let drivers = args.driver_secret_file.as_ref().map(Secret::from_file).transpose()?;
    Ok(Secrets { agents: agents.or_else(|| shared.clone()), drivers: drivers.or(shared) })
}

/// Serves with the flags `args` until `--duration` passes or Ctrl-C / SIGTERM, printing the
/// address once listening.
pub fn serve(args: Args) -> anyhow::Result<()> {
    logging::install();
    logging::set_loglevel(&args.log_level)?;
    if let Some(path) = &args.log_file {
        logging::set_logfile(path)?;
    }
    let autoscale = autoscale(&args)?;
    let config = ServerConfig {
        bind: args.bind,
        port: args.port,
        default_timeout: args.timeout,
        task_limit: args.task_limit,
        result_ttl: args.result_ttl,
        max_results: args.max_results,
        session_ttl: args.session_ttl,
        handshake_timeout: args.handshake_timeout,
        max_attempts: args.max_attempts,
        deadline_grace: args.deadline_grace,
        secrets: secrets(&args)?,
        allow_insecure: args.insecure,
        data_dir: args.data_dir,
        reattach_grace: args.reattach_grace,
        plaintext: args.insecure_plaintext,
        tls_cert: args.tls_cert.zip(args.tls_key),
        dashboard: args.dashboard,
        dashboard_token: args.dashboard_token_file.as_ref().map(Secret::from_file).transpose()?,
        autoscale,
    };
    let address_file = args.address_file.clone();
    serve_until(config, args.duration, |server| {
        let addr = server.local_addr()?;
        if let Some(path) = &address_file {
            server.write_address_file(path).map_err(|e| {
                std::io::Error::other(format!(
                    "cannot write --address-file {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(file = %path.display(), "where agents find the server is written");
        }
        println!("blitzen-server listening on {addr}");
        Ok(())
    })?;
    Ok(())
}

/// Which server to ask, and how.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The server: HOST or HOST:PORT.
    #[arg(long, default_value = "127.0.0.1")]
    server: String,
    /// The server's port, when --server gives none.
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// File holding the drivers' secret (the server's --secret-file or
    /// --driver-secret-file). Default: the BLITZEN_SECRET environment variable, if set.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// With a secret, connect UNENCRYPTED (for a server run with --insecure-plaintext).
    #[arg(long, conflicts_with_all = ["tls_pin", "tls_ca"])]
    insecure_plaintext: bool,
    /// Accept only a server certificate with this SHA-256 fingerprint (the server logs it).
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "tls_ca")]
    tls_pin: Option<String>,
    /// Accept only a server certificate issued by this CA (PEM) for the --server host.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// Seconds to wait for the server to connect and answer.
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs, default_value = "10")]
    timeout: Duration,
    /// Print exactly one JSON value (an error as {"error": "..."}, with exit code 1).
    #[arg(long)]
    json: bool,
}

/// Runs a subcommand; exit code 0 when the server answered, 1 otherwise.
pub fn observe(command: Command) -> ExitCode {
    let to = match &command {
        Command::Status { to, .. }
        | Command::Failures { to, .. }
        | Command::Cancel { to, .. }
        | Command::Resume { to } => to,
    };
    let json = to.json;
    match answer(&command, to) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let message = error_text(&*e);
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            } else {
                eprintln!("blitzen-server: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

type Failed = Box<dyn std::error::Error + Send + Sync>;

/// Asks the server and renders its answer.
fn answer(command: &Command, to: &Target) -> Result<String, Failed> {
    let server = blitzen_net::parse_server(&to.server, to.port)?;
    let secret = Secret::from_file_or_env(to.secret_file.as_deref())?;
    let (pin, ca) = (to.tls_pin.as_deref(), to.tls_ca.as_deref());
    let tls = PeerTls::from_flags(to.insecure_plaintext, pin, ca)?;
    let request = match command {
        Command::Status { .. } => FromObserver::Status,
        Command::Failures { session, .. } => FromObserver::Failures { session: session.clone() },
        Command::Cancel { session, tasks, .. } => {
            FromObserver::Cancel { session: session.clone(), ids: tasks.clone() }
        }
        Command::Resume { .. } => FromObserver::ResumeAutoscaling,
    };
    let only = match command {
        Command::Status { task, .. } | Command::Failures { task, .. } => task.as_deref(),
        Command::Cancel { .. } | Command::Resume { .. } => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = runtime.block_on(ask(&server, secret.as_ref(), &tls, request, to.timeout))?;
    render(&server, only_task(reply, only), to.json)
}
