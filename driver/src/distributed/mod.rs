//! [`DistributedDispatcher`]: the dispatcher API over a Blitzen cluster, plus the seed's
//! `spawn_server` and `spawn_client`; [`LocalCluster`]: a server and an agent inside this
//! program, for trying things out and for tests.
//!
//! - `link`: the driver's connection (runtime thread): connect, submit, receive, acknowledge.
//! - `local`: [`LocalCluster`].

mod link;
mod local;

pub use local::LocalCluster;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use blitzen_client::AgentConfig;
use blitzen_common::cli::termination;
use blitzen_common::net;
use blitzen_common::task::encode_value;
use blitzen_common::worker::is_unentered_worker;
use blitzen_common::{Task, TaskError, logging};
use blitzen_protocol::Outcome;
use blitzen_protocol::cluster::{DEFAULT_PORT, Submission, TaskKind};
use blitzen_server::{Server, ServerConfig};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::results::{DispatchError, Fetch, ResultTable, RunOptions, TaskId, TaskResult};

/// Runs tasks on the agents of a Blitzen cluster. Same API as
/// [`MulticoreDispatcher`](crate::MulticoreDispatcher): blocking, `run` never waits.
///
/// `DistributedDispatcher::new(ip)` only records the server's address (the seed's
/// `DistributedDispatcher(server_ip=ip)`): the same value can [`spawn_server`](Self::spawn_server),
/// [`spawn_client`](Self::spawn_client), or submit tasks — the first `run` connects, on a
/// runtime thread of its own. Results are pushed by the server as they finish; the driver sees
/// only its own tasks. If the server goes away, every unfinished task ends with
/// [`TaskError::Lost`] saying so; nothing waits forever.
pub struct DistributedDispatcher {
    /// The server, `host:port`.
    server: String,
    default_timeout: Option<Duration>,
    connect_timeout: Duration,
    /// Whether `spawn_server` may listen on a non-loopback address.
    insecure: bool,
    table: Arc<ResultTable>,
    /// The connection, once the first task started it.
    link: Mutex<LinkState>,
}

enum LinkState {
    Idle,
    Up(Link),
    Down,
}

struct Link {
    submissions: mpsc::UnboundedSender<Submission>,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
    /// Answers once whether the handshake succeeded.
    connected: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
}

impl DistributedDispatcher {
    /// A dispatcher for the server at `server` (`host` or `host:port`; port 7464 by default).
    /// Nothing is contacted yet.
    pub fn new(server: impl AsRef<str>) -> Self {
        Self {
            server: net::with_default_port(server.as_ref(), DEFAULT_PORT),
            default_timeout: None,
            connect_timeout: Duration::from_secs(10),
            insecure: false,
            table: Arc::new(ResultTable::new()),
            link: Mutex::new(LinkState::Idle),
        }
    }

    /// Timeout of tasks submitted without one.
    pub fn with_default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// How long to keep trying to reach the server (default 10 s) before every task ends with
    /// [`TaskError::Lost`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Lets [`spawn_server`](Self::spawn_server) listen on a non-loopback address although
    /// connections are not authenticated.
    pub fn allow_insecure(mut self, allow: bool) -> Self {
        self.insecure = allow;
        self
    }

    /// The server address in use.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Connects now and waits for the handshake, instead of on the first `run`.
    pub fn connect(&self) -> Result<(), DispatchError> {
        let waiter = {
            let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*link, LinkState::Idle) {
                *link = LinkState::Up(self.start_link()?);
            }
            match &mut *link {
                LinkState::Up(l) => l.connected.take(),
                _ => return Err(DispatchError::Connect("the dispatcher is shut down".into())),
            }
        };
        match waiter.map(|w| w.recv()) {
            Some(Ok(Err(reason))) => Err(DispatchError::Connect(reason)),
            Some(Err(_)) => Err(DispatchError::Connect("the connection ended".into())),
            _ => Ok(()),
        }
    }

    /// Submits `task(args)` to the cluster and returns its id at once.
    pub fn run<T: Task>(&self, task: T, args: T::Args) -> TaskId<T::Output> {
        self.run_with(task, args, RunOptions::default())
    }

    /// [`run`](Self::run) with a timeout counted from the task's start on a worker (the seed's
    /// `run(f, x, timeout=7)`).
    pub fn run_with_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Duration,
    ) -> TaskId<T::Output> {
        self.run_with(task, args, RunOptions::timeout(timeout))
    }

    /// [`run`](Self::run) with options.
    pub fn run_with<T: Task>(
        &self,
        _task: T,
        args: T::Args,
        options: RunOptions,
    ) -> TaskId<T::Output> {
        let (id, closed) = self.table.register(T::NAME, T::SIGNATURE);
        if closed {
            return id;
        }
        let args = match encode_value(&args) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.table.settle(id.seq(), Outcome::BadArguments { message: e.to_string() });
                return id;
            }
        };
        let submission = Submission {
            id: id.seq(),
            kind: TaskKind {
                name: T::NAME.to_string(),
                fingerprint: T::FINGERPRINT,
                signature: T::SIGNATURE.to_string(),
            },
            args,
            timeout_ms: options.timeout.or(self.default_timeout).map(|t| t.as_millis() as u64),
        };
        let sent = {
            let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*link, LinkState::Idle) {
                match self.start_link() {
                    Ok(l) => *link = LinkState::Up(l),
                    Err(e) => {
                        *link = LinkState::Down;
                        drop(link);
                        self.table.close(Outcome::Lost { reason: e.to_string() });
                        return id;
                    }
                }
            }
            match &*link {
                LinkState::Up(l) => l.submissions.send(submission).is_ok(),
                _ => false,
            }
        };
        if !sent {
            let reason = "the connection to the server has ended".to_string();
            self.table.settle(id.seq(), Outcome::Lost { reason });
        }
        id
    }

    /// Blocks until every listed task has finished; results in the order of `ids`, removed.
    pub fn get_results<O: DeserializeOwned>(
        &self,
        ids: &[TaskId<O>],
    ) -> Result<Vec<Result<O, TaskError>>, DispatchError> {
        self.get_results_with(ids, Fetch::default())
    }

    /// [`get_results`](Self::get_results) with options (`Fetch::keep()`, a wait limit).
    pub fn get_results_with<O: DeserializeOwned>(
        &self,
        ids: &[TaskId<O>],
        fetch: Fetch,
    ) -> Result<Vec<Result<O, TaskError>>, DispatchError> {
        let results = self.table.fetch(ids, fetch)?;
        Ok(results.iter().map(TaskResult::decode).collect())
    }

    /// Full [`TaskResult`]s (captured output, worker and host, run time); mixed types via
    /// [`TaskId::untyped`].
    pub fn get_task_results<O>(
        &self,
        ids: &[TaskId<O>],
        fetch: Fetch,
    ) -> Result<Vec<TaskResult>, DispatchError> {
        self.table.fetch(ids, fetch)
    }

    /// Waits for every task, returns every result not yet fetched in submission order, then
    /// disconnects (the server keeps serving others).
    pub fn join(&self) -> Vec<TaskResult> {
        let results = self.table.take_all();
        self.shutdown();
        results
    }

    /// Disconnects: tasks not finished end as [`TaskError::Cancelled`] and the server forgets
    /// them. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let state = std::mem::replace(
            &mut *self.link.lock().unwrap_or_else(PoisonError::into_inner),
            LinkState::Down,
        );
        if let LinkState::Up(link) = state {
            let _ = link.stop.send(());
            let _ = link.thread.join();
        }
        self.table.close(Outcome::Cancelled { reason: "the dispatcher is shut down".into() });
    }

    /// Tasks submitted and not yet finished.
    pub fn pending(&self) -> usize {
        self.table.pending()
    }

    /// Runs a server on this dispatcher's address for `duration` (until Ctrl-C or SIGTERM when
    /// `None`), then shuts it down cleanly. Blocks meanwhile, like the seed's `spawn_server`.
    pub fn spawn_server(&self, duration: impl Into<Option<Duration>>) -> Result<(), DispatchError> {
        let addr = resolve(&self.server).map_err(DispatchError::Serve)?;
        if !addr.ip().is_loopback() && !self.insecure {
            return Err(DispatchError::Serve(format!(
                "refusing to listen on {} without authentication; use allow_insecure(true) to \
                 do it anyway",
                addr.ip()
            )));
        }
        logging::install();
        let config = ServerConfig { bind: addr.ip(), port: addr.port(), ..ServerConfig::default() };
        let duration = duration.into();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(DispatchError::Runtime)?;
        runtime.block_on(async {
            let server =
                Server::bind(config).await.map_err(|e| DispatchError::Serve(e.to_string()))?;
            let shutdown = CancellationToken::new();
            let stopper = shutdown.clone();
            tokio::spawn(async move {
                match duration {
                    Some(d) => tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = termination() => {}
                    },
                    None => termination().await,
                }
                stopper.cancel();
            });
            server.run(shutdown).await.map_err(|e| DispatchError::Serve(e.to_string()))
        })
    }

    /// Runs an agent with `workers` worker processes for this dispatcher's server, until Ctrl-C
    /// or SIGTERM; it waits for the server and reconnects by itself. The workers are this
    /// program re-executed, so they know the tasks it links: `main` must call
    /// [`worker_main`](crate::worker_main) first. The seed's `spawn_client(workers=6)`.
    pub fn spawn_client(&self, workers: usize) -> Result<(), DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        logging::install();
        let config = AgentConfig::new(&self.server, workers);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DispatchError::Runtime)?;
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            let stopper = shutdown.clone();
            tokio::spawn(async move {
                termination().await;
                stopper.cancel();
            });
            blitzen_client::run(config, shutdown).await
        })?;
        Ok(())
    }

    fn start_link(&self) -> Result<Link, DispatchError> {
        logging::install();
        let (submissions, queue) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let server = self.server.clone();
        let table = self.table.clone();
        let connect_timeout = self.connect_timeout;
        let thread = std::thread::Builder::new()
            .name("blitzen-driver".into())
            .spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let reason = format!("cannot start the driver's runtime: {e}");
                            let _ = connected_tx.send(Err(reason.clone()));
                            table.close(Outcome::Lost { reason });
                            return;
                        }
                    };
                runtime.block_on(link::drive(
                    server,
                    connect_timeout,
                    table,
                    queue,
                    stopped,
                    connected_tx,
                ));
            })
            .map_err(DispatchError::Runtime)?;
        Ok(Link { submissions, stop, thread, connected: Some(connected) })
    }
}

impl Drop for DistributedDispatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for DistributedDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedDispatcher")
            .field("server", &self.server)
            .field("pending", &self.table.pending())
            .finish()
    }
}

/// `host:port` to one socket address (the first the resolver gives).
fn resolve(server: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server} resolves to no address"))
}

/// The address of the interface this machine would use to reach other hosts, found by asking
/// the kernel for a route; no packet is sent. Used for `DistributedDispatcher::new`.
pub(crate) fn local_ip() -> std::io::Result<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // 192.0.2.1 is reserved for documentation (TEST-NET-1): connecting a UDP socket only picks
    // a route and a source address; nothing is sent to it.
    socket.connect("192.0.2.1:9")?;
    Ok(socket.local_addr()?.ip())
}
