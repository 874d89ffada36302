//! `blitzen-client`: the agent that gives a Blitzen cluster the worker processes of one machine.
//!
//! [`run`] connects to the server (retrying with backoff until it is up), announces the tasks
//! compiled into this binary and its number of workers, then runs what the server sends on a
//! worker pool (the same pool as the multicore dispatcher) and sends results back in batches.
//! When the connection is lost — the network failed, the agent was frozen — it reconnects by
//! itself; tasks keep running meanwhile and their results are delivered once it is back (the
//! server, which has handed them out again, keeps each task's first result). When the server
//! restarted on its data directory (the same identity, another run), the agent re-attaches: it
//! names the tasks it holds, and those the server still has finish here, once. When a server
//! without a data directory restarted, the tasks of its previous run are dropped.
//!
//! The stock binary runs the built-in tasks (`sleep`, `echo`, `command`). A program with its own
//! tasks runs an agent with `DistributedDispatcher::spawn_client`, which calls [`run`].
//!
//! - this file: [`AgentConfig`], [`run`] (connect, reconnect, keep the pool across
//!   connections) and [`AgentError`].
//! - [`cli`]: the binary's command line — its flags, and running an agent with them.
//! - `connection` (private): one connection — tasks in, results out, heartbeats — as a type
//!   with one method per message.
//! - `server_file` (private): where the server is, from the file `blitzen-server
//!   --address-file` writes.
//! - `reattach` (private): re-attaching to a server that restarted on its data directory.
//! - `succession` (private): the lock that tells which ended agent process this one replaces.
//! - `cache` (private): the shared values kept for the server's tasks, as files the workers map.

mod cache;
pub mod cli;
mod connection;
mod reattach;
mod server_file;
mod succession;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_common::cli::termination;
use blitzen_common::pool::{Pool, PoolConfig, PoolError, Report};
use blitzen_common::registry;
use blitzen_common::task::TaskEntry;
use blitzen_net::{ConnectError, PeerTls, Secret};
use blitzen_protocol::cluster::{Role, TaskKind};
use blitzen_protocol::ids::{JobId, ServerId, TaskKey};
use blitzen_protocol::{Lines, Unstreamed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use connection::{Connection, End};
use server_file::where_the_server_is;
use succession::Succession;

pub use blitzen_protocol::cluster::DEFAULT_PORT;

/// The size of an agent's cache of shared values unless told otherwise: 1 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 1 << 30;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server, `host:port`.
    pub server: String,
    /// Worker processes (and their settings).
    pub pool: PoolConfig,
    /// The name this agent gives itself in the server's logs and in task errors.
    pub host: String,
    /// Sent when nothing else was sent for this long.
    pub heartbeat: Duration,
    /// Longest pause between connection attempts.
    pub max_backoff: Duration,
    /// Limit on one connection attempt.
    pub connect_timeout: Duration,
    /// Notified each time the agent is connected and serving (for programs that embed one).
    pub connected: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The cluster's shared secret, when the server requires one. With it the connection is
    /// encrypted (TLS 1.3), unless `tls.plaintext`.
    pub secret: Option<Secret>,
    /// How the connection is encrypted, and what is checked of the server's certificate.
    pub tls: PeerTls,
    /// Where to read the server's address and certificate fingerprint before each attempt to
    /// connect, instead of `server` (what `blitzen-server --address-file` writes): the agent
    /// waits for the file, and follows a server that restarts elsewhere.
    pub server_file: Option<std::path::PathBuf>,
    /// How many bytes of shared values it keeps for its tasks at most (the server decides what
    /// stays within it).
    pub cache_size: u64,
    /// Stop once the server has not been reachable for this long (since the agent started, or
    /// since its connection was lost); `None`: wait for it and follow its restarts forever.
    pub give_up_after: Option<Duration>,
    /// Leave the cluster once it has held no task for this long (the server hears why, and
    /// the agent stops); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Stop this long after starting (a batch job's time limit, less a margin): the server
    /// sends it no task expected to outlast that (by its timeout, or how long its kind has
    /// taken), and at that moment it leaves, handing back anything still running; `None`: no
    /// limit.
    pub time_limit: Option<Duration>,
    /// The allocation it runs in, as its scheduler names it (a Slurm job id), told to the
    /// server; empty: none.
    pub allocation: String,
}

impl AgentConfig {
    /// An agent with `workers` workers for the server at `server` (`host[:port]`).
    pub fn new(server: &str, workers: usize) -> Self {
        Self {
            server: blitzen_net::with_default_port(server, DEFAULT_PORT),
            pool: PoolConfig::new(workers),
            host: host_name(),
            heartbeat: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connected: None,
            secret: None,
            tls: PeerTls::default(),
            server_file: None,
            cache_size: DEFAULT_CACHE_SIZE,
            give_up_after: None,
            idle_timeout: None,
            time_limit: None,
            allocation: std::env::var("SLURM_JOB_ID").unwrap_or_default(),
        }
    }
}

/// Why an agent stopped on its own.
#[derive(thiserror::Error)]
pub enum AgentError {
    /// The server refused this agent, or this agent the server (another protocol version, a
    /// wrong secret, one side without a secret); retrying cannot help.
    #[error("cannot join the cluster at {server}: {cause}")]
    Refused {
        /// The server.
        server: String,
        /// Why.
        #[source]
        cause: ConnectError,
    },
    /// The worker processes could not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The agent's runtime could not start (the system is out of threads or memory).
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A random id for this agent process, the same on each of its connections (never 0).
fn agent_id() -> u64 {
    let random = blitzen_net::secret::nonce().map_or(0, |n| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&n[..8]);
        u64::from_be_bytes(id)
    });
    if random == 0 { u64::from(std::process::id()) | 1 << 63 } else { random }
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Serves the cluster until `shutdown` is cancelled, reconnecting whenever the connection is
/// lost. Returns an error only for what retrying cannot fix.
///
/// The worker pool outlives a lost connection: tasks keep running, and when the agent is back
/// with the same server (same [`Welcome::server_id`](blitzen_protocol::cluster::Welcome)) their
/// results are delivered as recovered — the server keeps each task's first result. A different
/// server (it restarted) knows nothing of them: the pool is restarted instead.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    match config.pool.workers {
        0 => return Err(PoolError::NoWorkers.into()),
        n if n > blitzen_common::pool::MAX_WORKERS => {
            return Err(PoolError::TooManyWorkers(n).into());
        }
        _ => {}
    }
    // Assignments name a task by its index in this list.
    let entries = registry::global().map_err(PoolError::from)?.entries();
    let kinds: Vec<TaskKind> = entries
        .iter()
        .map(|e| TaskKind {
            name: e.name.to_string(),
            fingerprint: e.fingerprint,
            signature: e.signature.to_string(),
            request: None,
            label: None,
            stream: false,
            priority: 0,
        })
        .collect();
    let (builtins, own): (Vec<&TaskEntry>, Vec<&TaskEntry>) =
        entries.iter().copied().partition(|e| blitzen_common::builtin::is_builtin(e));
    let names: Vec<&str> = own.iter().chain(&builtins).map(|e| e.name).collect();
    if own.is_empty() {
        info!(tasks = %names.join(", "), "this agent serves the built-in tasks only");
    } else {
        info!(count = names.len(), tasks = %names.join(", "), "this agent serves these tasks");
    }
    let capacity = config.pool.capacity_or_default();
    capacity.validate().map_err(PoolError::BadCapacity)?;
    info!(%capacity, "this agent offers");
    let id = agent_id();
    // Held until this function returns: the lock is this process's for as long as it serves.
    let succession = Succession::claim(&config.host, id);
    if succession.replaces != 0 {
        info!(host = %config.host, "this agent replaces an ended agent process of the same name");
    }
    // A limit past what a clock can hold is none.
    let ends_at = config.time_limit.and_then(|limit| Instant::now().checked_add(limit));
    let leave = Leave { idle: config.idle_timeout, at: ends_at };
    let mut role = Role::Agent {
        capacity: Some(capacity),
        host: config.host.clone(),
        workers: u32::try_from(config.pool.workers).unwrap_or(u32::MAX),
        tasks: kinds,
        heartbeat_ms: config.heartbeat.as_millis() as u64,
        agent_id: id,
        replaces: succession.replaces,
        cache_size: config.cache_size,
        ends_in_ms: 0,
        allocation: config.allocation.clone(),
    };
    let mut work: Option<Work> = None;
    let mut backoff = Duration::from_millis(100);
    let mut waiting_logged = false;
    // What was wrong with the server file last time: each new reason is logged once.
    let mut file_trouble: Option<String> = None;
    // Since when the server has not been reachable (reset while connected).
    let mut unreachable_since = Instant::now();
    while !shutdown.is_cancelled() {
        if let (Some(at), Role::Agent { ends_in_ms, .. }) = (ends_at, &mut role) {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                info!("the agent's time limit is reached: stopping");
                break;
            }
            *ends_in_ms = (left.as_millis() as u64).max(1);
        }
        if let Some(limit) = config.give_up_after.filter(|l| unreachable_since.elapsed() >= *l) {
            info!(
                after = %format_args!("{}s", limit.as_secs_f64()),
                "the server has not been reachable for the give-up time: stopping"
            );
            break;
        }
        let (server, tls) = match where_the_server_is(&config) {
            Ok(found) => {
                file_trouble = None;
                found
            }
            Err(why) => {
                if file_trouble.as_ref() != Some(&why) {
                    info!(%why, "waiting for the server's address file");
                    file_trouble = Some(why);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
                continue;
            }
        };
        let attempt = blitzen_net::connect(
            &server,
            role.clone(),
            config.secret.as_ref(),
            &tls,
            config.connect_timeout,
        );
        match attempt.await {
            Ok(admitted) => {
                backoff = Duration::from_millis(100);
                waiting_logged = false;
                // Another identity: a new server, or one without a data directory that
                // restarted; nothing the pool holds means anything to it.
                let (server_id, run) = (admitted.greeting.server_id, admitted.greeting.run);
                let same = work.as_ref().is_some_and(|w| w.server_id == server_id);
                if !same {
                    if let Some(old) = work.take() {
                        info!("the server restarted: the tasks of its previous run are dropped");
                        old.pool.shutdown().await;
                    }
                    work = Some(Work::start(&config, server_id, run).await?);
                }
                let Some(w) = work.as_mut() else { break };
                let encrypted = admitted.encrypted;
                let key_exchange = admitted.key_exchange.as_deref().unwrap_or("none");
                info!(%server, workers = config.pool.workers, encrypted, %key_exchange, "connected");
                if let Some(connected) = &config.connected {
                    connected.notify_one();
                }
                let connection = Connection::new(&entries, w, admitted.write, run);
                let end = connection.serve(admitted.reader, config.heartbeat, &shutdown, leave);
                let end = end.await;
                unreachable_since = Instant::now();
                match end {
                    End::Stop => break,
                    End::Left(reason) => {
                        info!(%reason, "left the cluster");
                        break;
                    }
                    End::Lost(reason) => warn!(%reason, "connection lost; reconnecting"),
                }
            }
            Err(cause) if cause.is_refusal() => {
                return Err(AgentError::Refused { server, cause });
            }
            Err(e) => {
                if !waiting_logged {
                    match config.give_up_after {
                        Some(limit) => info!(
                            %server, error = %e,
                            give_up_after = %format_args!("{}s", limit.as_secs_f64()),
                            "server not reachable; retrying"
                        ),
                        None => info!(
                            %server, error = %e,
                            "server not reachable; retrying until it is (or Ctrl-C)"
                        ),
                    }
                    waiting_logged = true;
                }
                debug!(?backoff, "next attempt");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
    if let Some(w) = work {
        w.pool.shutdown().await;
    }
    info!("agent stopped");
    Ok(())
}

/// When an agent leaves the cluster by itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Leave {
    /// Once it has held no task for this long: it says so, and leaves when the server has
    /// answered and anything sent meanwhile is done.
    pub idle: Option<Duration>,
    /// At this moment (its time limit), whatever it holds: the server runs the rest elsewhere.
    pub at: Option<Instant>,
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The worker pool for one server, and what it holds.
struct Work {
    /// The server the pool's tasks came from, the same across its restarts when it has a data
    /// directory.
    server_id: ServerId,
    /// The run of the server whose keys the tasks held have: another run (the server
    /// restarted) is re-attached to.
    run: ServerId,
    pool: Pool,
    /// Finished jobs, from the pool's sink.
    results: mpsc::UnboundedReceiver<Vec<Report<JobId>>>,
    /// Jobs with a timeout that started on a worker.
    started: mpsc::UnboundedReceiver<Vec<JobId>>,
    /// Lines streamed jobs printed, from the pool (each job's before its result).
    output: mpsc::UnboundedReceiver<(JobId, Lines)>,
    /// Lines of jobs assigned on an earlier connection, not sent (the server they were for
    /// has no use for them): counted into their results, by stream.
    unstreamed: Unstreamed<JobId>,
    /// The tasks the pool holds (running or waiting for a worker), by the agent's own job
    /// number: a task's key may change when the agent re-attaches after a restart.
    jobs: HashMap<JobId, Held>,
    /// The next job's number.
    next_job: u64,
    /// Connections to this server so far; the current one's number. A job assigned on an
    /// earlier connection goes out as recovered.
    connection: u64,
    /// Results sent on an earlier connection that the server never acknowledged: sent again,
    /// as recovered, on the next one.
    unsent: Vec<Unacked>,
    /// The shared values kept for this server's tasks.
    cache: cache::ShareCache,
    /// Since when it has held no task (meaningful while `jobs` is empty).
    idle_since: Instant,
}

/// A task the pool holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The server's key for it, in [`Work::run`].
    key: TaskKey,
    /// Its number in the server's data directory (see [`Assignment::seq`]).
    ///
    /// [`Assignment::seq`]: blitzen_protocol::cluster::Assignment::seq
    seq: Option<u64>,
    /// The connection it was assigned on (see [`Work::connection`]).
    connection: u64,
}

/// A result sent and not yet acknowledged by the server.
#[derive(Debug, Clone)]
struct Unacked {
    /// Its task's number in the data directory, to name it by when re-attaching.
    seq: Option<u64>,
    result: Report<TaskKey>,
}

impl Work {
    async fn start(
        config: &AgentConfig,
        server_id: ServerId,
        run: ServerId,
    ) -> Result<Self, AgentError> {
        let (results_tx, results) = mpsc::unbounded_channel::<Vec<Report<JobId>>>();
        let sink = Box::new(move |batch| {
            let _ = results_tx.send(batch);
        });
        let (started_tx, started) = mpsc::unbounded_channel();
        let mut pool_config = config.pool.clone();
        pool_config.on_start = Some(Arc::new(move |ids| {
            let _ = started_tx.send(ids);
        }));
        let (output_tx, output) = mpsc::unbounded_channel();
        pool_config.on_output = Some(Arc::new(move |id, lines| {
            let _ = output_tx.send((id, lines));
        }));
        let pool = Pool::start(pool_config, sink).await?;
        Ok(Self {
            server_id,
            run,
            pool,
            results,
            started,
            output,
            unstreamed: Unstreamed::default(),
            jobs: HashMap::new(),
            next_job: 0,
            connection: 0,
            unsent: Vec::new(),
            cache: cache::ShareCache::create()?,
            idle_since: Instant::now(),
        })
    }
}

impl Work {
    /// Adds the lines of job `id` that were not sent into its result.
    fn add_unstreamed(&mut self, id: JobId, run: &mut blitzen_protocol::Finished) {
        self.unstreamed.add_into(&id, run);
    }
}

/// [`run`] on a runtime of its own until Ctrl-C or SIGTERM; blocks meanwhile. What the
/// `blitzen-client` binary and `spawn_client` run.
pub fn run_until_signal(config: AgentConfig) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let agent = run(config, shutdown.clone());
        tokio::pin!(agent);
        tokio::select! {
            result = &mut agent => return result,
            _ = termination() => info!("signal received"),
        }
        shutdown.cancel();
        agent.await
    })
}
