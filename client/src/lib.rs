//! `blitzen-client`: the agent that gives a Blitzen cluster the worker processes of one machine.
//!
//! [`run`] connects to the server (retrying with backoff until it is up), announces the tasks
//! compiled into this binary and its number of workers, then runs what the server sends on a
//! worker pool (the same pool as the multicore dispatcher) and sends results back in batches.
//! When the connection is lost — the network failed, the agent was frozen — it reconnects by
//! itself; tasks keep running meanwhile and their results are delivered once it is back (the
//! server, which has handed them out again, keeps each task's first result). When the server
//! itself restarted, the tasks of its previous run are dropped.
//!
//! The stock binary runs the built-in tasks (`sleep`, `echo`, `command`). A program with its own
//! tasks runs an agent with `DistributedDispatcher::spawn_client`, which calls [`run`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use blitzen_common::auth::Secret;
use blitzen_common::handshake::{HandshakeError, handshake};
use blitzen_common::net::{self, FramedReader, spawn_writer};
use blitzen_common::pool::{Job, JobResult, Pool, PoolConfig, PoolError};
use blitzen_common::registry;
use blitzen_common::task::TaskEntry;
use blitzen_protocol::cluster::{AgentResult, FromAgent, Role, TaskKind, ToAgent};
use blitzen_protocol::{Captured, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use blitzen_protocol::cluster::DEFAULT_PORT;

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
    /// The cluster's shared secret, when the server requires one.
    pub secret: Option<Secret>,
}

impl AgentConfig {
    /// An agent with `workers` workers for the server at `server` (`host[:port]`).
    pub fn new(server: &str, workers: usize) -> Self {
        Self {
            server: net::with_default_port(server, DEFAULT_PORT),
            pool: PoolConfig::new(workers),
            host: host_name(),
            heartbeat: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connected: None,
            secret: None,
        }
    }
}

/// Why an agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The server refused this agent (for instance another protocol version); retrying cannot
    /// help.
    #[error("the server at {server} refused this agent: {reason}")]
    Refused {
        /// The server.
        server: String,
        /// Its reason.
        reason: String,
    },
    /// The worker processes could not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
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
    // Assignments name a task by its index in this list.
    let entries = registry::global().map_err(PoolError::from)?.entries();
    let kinds: Vec<TaskKind> = entries
        .iter()
        .map(|e| TaskKind {
            name: e.name.to_string(),
            fingerprint: e.fingerprint,
            signature: e.signature.to_string(),
        })
        .collect();
    let mut work: Option<Work> = None;
    let mut backoff = Duration::from_millis(100);
    let mut waiting_logged = false;
    while !shutdown.is_cancelled() {
        match connect(&config, &kinds).await {
            Ok(Connected::Welcome(reader, write, server_id)) => {
                backoff = Duration::from_millis(100);
                waiting_logged = false;
                let same = work.as_ref().is_some_and(|w| w.server_id == server_id);
                if !same {
                    if let Some(old) = work.take() {
                        info!("the server restarted: the tasks of its previous run are dropped");
                        old.pool.shutdown().await;
                    }
                    work = Some(Work::start(&config, server_id).await?);
                }
                let Some(w) = work.as_mut() else { break };
                info!(server = %config.server, workers = config.pool.workers, "connected");
                match serve(&config, &entries, w, reader, write, &shutdown).await {
                    End::Stop => break,
                    End::Lost(reason) => warn!(%reason, "connection lost; reconnecting"),
                }
            }
            Ok(Connected::Refused(reason)) => {
                return Err(AgentError::Refused { server: config.server.clone(), reason });
            }
            Err(e) => {
                if !waiting_logged {
                    info!(server = %config.server, error = %e, "server not reachable; retrying");
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

/// The worker pool for one run of a server, and what it holds.
struct Work {
    server_id: u64,
    pool: Pool,
    results: mpsc::UnboundedReceiver<Vec<JobResult>>,
    /// Tasks with a timeout that started on a worker.
    started: mpsc::UnboundedReceiver<Vec<u64>>,
    /// Tasks assigned on earlier connections, still running here: their results go out as
    /// recovered.
    earlier: HashSet<u64>,
}

impl Work {
    async fn start(config: &AgentConfig, server_id: u64) -> Result<Self, AgentError> {
        let (results_tx, results) = mpsc::unbounded_channel::<Vec<JobResult>>();
        let sink = Box::new(move |batch| {
            let _ = results_tx.send(batch);
        });
        let (started_tx, started) = mpsc::unbounded_channel();
        let mut pool_config = config.pool.clone();
        pool_config.on_start = Some(Arc::new(move |ids| {
            let _ = started_tx.send(ids);
        }));
        let pool = Pool::start(pool_config, sink).await?;
        Ok(Self { server_id, pool, results, started, earlier: HashSet::new() })
    }
}

enum Connected {
    Welcome(FramedReader, tokio::net::tcp::OwnedWriteHalf, u64),
    Refused(String),
}

async fn connect(config: &AgentConfig, kinds: &[TaskKind]) -> std::io::Result<Connected> {
    let stream = net::connect(&config.server, config.connect_timeout).await?;
    let role = Role::Agent {
        host: config.host.clone(),
        workers: config.pool.workers as u32,
        tasks: kinds.to_vec(),
        heartbeat_ms: config.heartbeat.as_millis() as u64,
    };
    match handshake(stream, role, config.secret.as_ref(), config.connect_timeout).await {
        Ok((reader, write, welcome)) => Ok(Connected::Welcome(reader, write, welcome.server_id)),
        Err(HandshakeError::Refused(reason)) => Ok(Connected::Refused(reason)),
        Err(HandshakeError::Connection(e)) => Err(std::io::Error::other(e)),
    }
}

enum End {
    Stop,
    Lost(String),
}

/// Runs one connection: tasks in, results out, heartbeats.
async fn serve(
    config: &AgentConfig,
    entries: &[&'static TaskEntry],
    work: &mut Work,
    mut reader: FramedReader,
    write: tokio::net::tcp::OwnedWriteHalf,
    shutdown: &CancellationToken,
) -> End {
    let (writer, _) = spawn_writer::<FromAgent>(write);
    if let Some(connected) = &config.connected {
        connected.notify_one();
    }
    // Tasks assigned on this connection and not finished yet.
    let mut current: HashSet<u64> = HashSet::new();
    let mut heartbeat = tokio::time::interval(config.heartbeat.max(Duration::from_millis(10)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_since_tick = false;
    let end = loop {
        // Biased: after a pause (the process was stopped), a closed connection is noticed
        // before results are written into it and lost; they go out on the next connection.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break End::Stop,
            message = reader.next::<ToAgent>() => match message {
                Ok(Some(ToAgent::Run(tasks))) => {
                    debug!(count = tasks.len(), "tasks received");
                    let mut unknown = Vec::new();
                    for t in tasks {
                        let Some(entry) = entries.get(t.kind as usize) else {
                            warn!(key = t.key, kind = t.kind, "the server sent a task kind this agent never announced");
                            unknown.push(t.key);
                            continue;
                        };
                        current.insert(t.key);
                        let job = Job {
                            id: t.key,
                            name: Cow::Borrowed(entry.name),
                            fingerprint: entry.fingerprint,
                            args: t.args,
                            timeout: t.timeout_ms.map(Duration::from_millis),
                            retries: t.retries,
                        };
                        if work.pool.submit(job).is_err() {
                            break;
                        }
                    }
                    if !unknown.is_empty() {
                        let done = unknown.into_iter().map(|key| AgentResult {
                            key,
                            outcome: Outcome::UnknownTask,
                            stdout: Captured::default(),
                            stderr: Captured::default(),
                            worker_pid: None,
                            elapsed_us: 0,
                        });
                        if writer.send(FromAgent::Done(done.collect())).is_err() {
                            break End::Lost("the connection closed".into());
                        }
                    }
                }
                Ok(Some(ToAgent::ShuttingDown { reason })) => break End::Lost(reason),
                Ok(None) => break End::Lost("the server closed the connection".into()),
                Err(e) => break End::Lost(format!("bad frame from the server: {e}")),
            },
            Some(batch) = work.results.recv() => {
                let mut batch = batch;
                while let Ok(more) = work.results.try_recv() {
                    batch.extend(more);
                }
                let (mut done, mut recovered) = (Vec::new(), Vec::new());
                for r in batch {
                    if current.remove(&r.id) {
                        done.push(to_agent_result(r));
                    } else if work.earlier.remove(&r.id) {
                        recovered.push(to_agent_result(r));
                    }
                }
                if !recovered.is_empty() {
                    info!(count = recovered.len(), "delivering results finished while disconnected");
                    if writer.send(FromAgent::Recovered(recovered)).is_err() {
                        break End::Lost("the connection closed".into());
                    }
                }
                if !done.is_empty() && writer.send(FromAgent::Done(done)).is_err() {
                    break End::Lost("the connection closed".into());
                }
                sent_since_tick = true;
            }
            Some(mut keys) = work.started.recv() => {
                while let Ok(more) = work.started.try_recv() {
                    keys.extend(more);
                }
                keys.retain(|k| current.contains(k));
                if !keys.is_empty() && writer.send(FromAgent::Started(keys)).is_err() {
                    break End::Lost("the connection closed".into());
                }
            }
            _ = heartbeat.tick() => {
                if !sent_since_tick && writer.send(FromAgent::Heartbeat).is_err() {
                    break End::Lost("the connection closed".into());
                }
                sent_since_tick = false;
            }
        }
    };
    // What is still running was assigned on this connection: delivered later as recovered.
    work.earlier.extend(current);
    end
}

fn to_agent_result(r: JobResult) -> AgentResult {
    AgentResult {
        key: r.id,
        outcome: r.outcome,
        stdout: r.stdout,
        stderr: r.stderr,
        worker_pid: r.worker,
        elapsed_us: r.elapsed.as_micros() as u64,
    }
}
