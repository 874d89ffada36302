//! [`DistributedDispatcher`]: the dispatcher API over a Blitzen cluster, plus the seed's
//! `spawn_server` and `spawn_client`; [`LocalCluster`]: a server and an agent inside this
//! program, for trying things out and for tests.
//!
//! - `link`: the driver's connection (runtime thread): connect, submit, receive, acknowledge;
//!   `backlog`: what it sent that the server has not taken, sent again after a reconnect;
//!   `handoff`: how many tasks it was handed and the server has taken (`wait_accepted`).
//! - `local`: [`LocalCluster`].
//! - `session`: a driver's session — its name, attaching to one another process left,
//!   detaching.
//! - `spawn`: the seed's `spawn_server` and `spawn_client`, a server or an agent in this process.
//! - `status`: asking the server about its cluster (`cluster_status`, `cluster_workers`).

mod backlog;
mod handoff;
mod link;
mod local;
mod session;
mod spawn;
mod status;

pub use blitzen_net::tls::{Fingerprint, TlsError};
pub use blitzen_net::{ConnectError, Secret, SecretError};
pub use local::LocalCluster;
#[doc(hidden)]
pub use spawn::AgentOptions;
pub use spawn::agent_main;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blitzen_common::logging;
use blitzen_net::PeerTls;
use blitzen_net::tls::Verify;
use blitzen_protocol::Outcome;
use blitzen_protocol::cluster::DEFAULT_PORT;
use blitzen_protocol::ids::DriverTaskId;
use tokio::sync::mpsc;

use crate::dispatcher::{Backend, Call, Dispatcher, Releaser, sealed};
use crate::error::DispatchError;
use crate::runtime::{self, RuntimeThread};
use crate::table::ResultTable;
use handoff::Handoff;
use session::{random_session, session_origin};

/// Runs tasks on the agents of a Blitzen cluster.
///
/// Its methods (documented on [`Dispatcher`]):
/// - its own: [`new`](Dispatcher::new), [`with_connect_timeout`](Dispatcher::with_connect_timeout),
///   [`with_unrunnable_limit`](Dispatcher::with_unrunnable_limit),
///   [`with_secret`](Dispatcher::with_secret), [`with_secret_file`](Dispatcher::with_secret_file),
///   [`allow_insecure`](Dispatcher::allow_insecure), [`with_data_dir`](Dispatcher::with_data_dir),
///   [`insecure_plaintext`](Dispatcher::insecure_plaintext),
///   [`with_tls_pin`](Dispatcher::with_tls_pin), [`with_tls_ca`](Dispatcher::with_tls_ca),
///   [`with_session`](Dispatcher::with_session), [`with_heartbeat`](Dispatcher::with_heartbeat),
///   [`with_reconnect_window`](Dispatcher::with_reconnect_window),
///   [`attach`](Dispatcher::attach), [`attached`](Dispatcher::attached),
///   [`detach`](Dispatcher::detach),
///   [`session`](Dispatcher::session), [`server`](Dispatcher::server),
///   [`connect`](Dispatcher::connect), [`wait_accepted`](Dispatcher::wait_accepted),
///   [`spawn_server`](Dispatcher::spawn_server), [`spawn_client`](Dispatcher::spawn_client),
///   [`cluster_status`](Dispatcher::cluster_status), [`cluster_workers`](Dispatcher::cluster_workers);
/// - shared with [`MulticoreDispatcher`](crate::MulticoreDispatcher):
///   [`run`](Dispatcher::run), [`run_with_timeout`](Dispatcher::run_with_timeout),
///   [`run_with`](Dispatcher::run_with), [`get_results`](Dispatcher::get_results),
///   [`get_results_with`](Dispatcher::get_results_with),
///   [`get_task_results`](Dispatcher::get_task_results), [`map`](Dispatcher::map),
///   [`imap`](Dispatcher::imap), [`imap_unordered`](Dispatcher::imap_unordered),
///   [`as_completed`](Dispatcher::as_completed), [`join`](Dispatcher::join),
///   [`join_within`](Dispatcher::join_within), [`shutdown`](Dispatcher::shutdown),
///   [`pending`](Dispatcher::pending), [`with_default_timeout`](Dispatcher::with_default_timeout).
///
/// `DistributedDispatcher::new(ip)` only records the server's address (the seed's
/// `DistributedDispatcher(server_ip=ip)`): the same value can `spawn_server`, `spawn_client`, or
/// submit tasks — the first `run` connects, on a runtime thread of its own. Results are pushed
/// by the server as they finish; the driver sees only its own tasks. A lost or silent
/// connection is made again within the reconnect window, and the session picks up where it
/// was; if the server cannot be reached again, or shuts down, every unfinished task ends with
/// [`TaskError::Lost`](crate::TaskError::Lost) saying so. Nothing waits forever.
pub type DistributedDispatcher = Dispatcher<Cluster>;

/// How often a driver and its server send each other something, by default.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The backend of [`DistributedDispatcher`]: one connection to a server, on a runtime thread.
pub struct Cluster {
    /// The server, `host:port`.
    server: String,
    connect_timeout: Duration,
    /// How often the connection sends something, both ways; see
    /// [`DistributedDispatcher::with_heartbeat`](Dispatcher::with_heartbeat).
    heartbeat: Duration,
    /// How long to keep trying to reconnect after losing the connection.
    reconnect_window: Duration,
    /// The session a reconnection takes over.
    session: String,
    /// Whether the first connection attaches to an existing session (see `attach`).
    attach: bool,
    /// Set by `detach`: the connection ends without a goodbye, so the server keeps the session.
    detached: Arc<std::sync::atomic::AtomicBool>,
    /// Whether `spawn_server` may listen on a non-loopback address without a secret.
    insecure: bool,
    /// Where `spawn_server` keeps its state, if anywhere.
    data_dir: Option<std::path::PathBuf>,
    /// The cluster's shared secret when one was given; otherwise `BLITZEN_SECRET`, read when
    /// needed ([`Cluster::secret`]).
    secret: Option<Secret>,
    /// How connections are encrypted (with a secret) and what is checked of the certificate.
    tls: PeerTls,
    /// The dispatcher's results, filled by the connection.
    table: Arc<ResultTable>,
    /// How many tasks were sent, and how many of them the server has taken.
    handoff: Arc<Handoff>,
    /// The connection, once the first task started it.
    link: Arc<Mutex<LinkState>>,
}

enum LinkState {
    Idle,
    Up(Link),
    Down,
}

struct Link {
    /// Calls to submit and cancels, taken by the connection.
    submissions: mpsc::UnboundedSender<link::Outgoing>,
    /// The thread the connection runs on; stopping it says goodbye to the server.
    thread: RuntimeThread,
    /// Answers once whether the handshake succeeded.
    connected: Option<std::sync::mpsc::Receiver<Result<(), DispatchError>>>,
}

impl sealed::Sealed for Cluster {}

/// Hands `call` to the connection, when there is one. Arguments that cannot fit in a message
/// are refused here, rather than lost on the way.
fn send_on(link: &LinkState, handoff: &Handoff, call: Call) -> Result<(), Outcome> {
    if call.payload_len() > blitzen_protocol::MAX_PAYLOAD_LEN {
        let reason = format!(
            "its arguments take {} bytes, more than a message to the server may carry ({}); \
             share large inputs through files or split them",
            call.payload_len(),
            blitzen_protocol::MAX_PAYLOAD_LEN
        );
        return Err(Outcome::Refused { reason });
    }
    match link {
        LinkState::Up(l) if l.submissions.send(link::Outgoing::Call(call)).is_ok() => {
            handoff.sent();
            Ok(())
        }
        _ => Err(Outcome::Lost { reason: "the connection to the server has ended".into() }),
    }
}

impl Cluster {
    /// The connection, started by the first call; `Err` with the outcome of every task when it
    /// cannot be.
    fn link_up(&self) -> Result<std::sync::MutexGuard<'_, LinkState>, Outcome> {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*link, LinkState::Idle) {
            match self.start_link() {
                Ok(l) => *link = LinkState::Up(l),
                Err(e) => {
                    *link = LinkState::Down;
                    drop(link);
                    let outcome = Outcome::Lost { reason: e.to_string() };
                    self.table.close(outcome.clone());
                    return Err(outcome);
                }
            }
        }
        Ok(link)
    }
}

impl Backend for Cluster {
    fn submit(&self, call: Call) -> Result<(), Outcome> {
        let link = self.link_up()?;
        send_on(&link, &self.handoff, call)
    }

    fn share(&self, bytes: &bytes::Bytes) -> Option<crate::call::Stored> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let link = self.link_up().ok()?;
        let LinkState::Up(l) = &*link else { return None };
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        l.submissions.send(link::Outgoing::Share(id, bytes.clone())).ok()?;
        let shared = self.link.clone();
        let unshare = Box::new(move |id| {
            if let LinkState::Up(l) = &*shared.lock().unwrap_or_else(PoisonError::into_inner) {
                let _ = l.submissions.send(link::Outgoing::Unshare(id));
            }
        });
        Some(crate::call::Stored { id, unshare })
    }

    fn releaser(&self) -> Releaser {
        let (link, handoff) = (self.link.clone(), self.handoff.clone());
        // A released task's inputs were sent before it: the connection was started then.
        Box::new(move |call| {
            send_on(&link.lock().unwrap_or_else(PoisonError::into_inner), &handoff, call)
        })
    }

    fn holds_inputs(&self) -> bool {
        true
    }

    fn cancel(&self, ids: Vec<DriverTaskId>) {
        let link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        // Without a connection, no task of this dispatcher is unfinished (they ended `Lost`).
        if let LinkState::Up(l) = &*link {
            let _ = l.submissions.send(link::Outgoing::Cancel(ids));
        }
    }

    /// Says goodbye to the server (it forgets this driver's tasks) and joins the thread.
    fn stop(&self) {
        let state = std::mem::replace(
            &mut *self.link.lock().unwrap_or_else(PoisonError::into_inner),
            LinkState::Down,
        );
        if let LinkState::Up(link) = state {
            link.thread.stop();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("server", &self.server).finish()
    }
}

impl Cluster {
    fn start_link(&self) -> Result<Link, DispatchError> {
        logging::install();
        let endpoint = link::Endpoint {
            server: self.server.clone(),
            secret: self.secret()?,
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            reconnect_window: self.reconnect_window,
            heartbeat: self.heartbeat,
            session: self.session.clone(),
            attach: self.attach,
            detached: self.detached.clone(),
        };
        let (submissions, queue) = mpsc::unbounded_channel();
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let table = self.table.clone();
        let handoff = self.handoff.clone();
        let thread =
            RuntimeThread::spawn("blitzen-driver", runtime::current_thread()?, move |stop| {
                link::drive(endpoint, table, handoff, queue, stop, connected_tx)
            })?;
        Ok(Link { submissions, thread, connected: Some(connected) })
    }

    /// The secret given with `with_secret`, or else the one in `BLITZEN_SECRET`, if any.
    fn secret(&self) -> Result<Option<Secret>, SecretError> {
        match &self.secret {
            Some(secret) => Ok(Some(secret.clone())),
            None => Secret::from_env(),
        }
    }
}

impl Dispatcher<Cluster> {
    /// A dispatcher for the server at `server` (`host` or `host:port`; port 7464 by default).
    /// Nothing is contacted yet.
    pub fn new(server: impl AsRef<str>) -> Self {
        let session = random_session();
        let table = Arc::new(ResultTable::with_origin(session_origin(&session)));
        Dispatcher::assemble(
            table.clone(),
            Cluster {
                server: blitzen_net::with_default_port(server.as_ref(), DEFAULT_PORT),
                connect_timeout: Duration::from_secs(10),
                heartbeat: DEFAULT_HEARTBEAT,
                reconnect_window: Duration::from_secs(60),
                session,
                attach: false,
                detached: Arc::default(),
                insecure: false,
                data_dir: None,
                secret: None,
                tls: PeerTls::default(),
                table,
                handoff: Arc::new(Handoff::default()),
                link: Arc::new(Mutex::new(LinkState::Idle)),
            },
        )
    }

    /// How long to keep trying to reach the server (default 10 s) before every task ends with
    /// [`TaskError::Lost`](crate::TaskError::Lost).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.backend.connect_timeout = timeout;
        self
    }

    /// How long to keep trying to get back to the server after the connection is lost (default
    /// 60 s). Within it the driver reconnects by itself with backoff, takes its session over,
    /// sends again what the server had not taken, and receives every result it is owed: the
    /// caller notices nothing but a log line. Past it, every unfinished task ends
    /// [`TaskError::Lost`](crate::TaskError::Lost) saying why.
    pub fn with_reconnect_window(mut self, window: Duration) -> Self {
        self.backend.reconnect_window = window;
        self
    }

    /// How often the driver and the server send each other something when there is nothing
    /// else to say (default 5 s). Each counts the other gone after three intervals without a
    /// byte: the server then keeps the driver's tasks and results as for a disconnected driver,
    /// and the driver ends its unfinished tasks [`TaskError::Lost`](crate::TaskError::Lost),
    /// saying that the server went silent (a frozen server, a cut link). A large result crawling
    /// over a slow link counts as alive, however long it takes.
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.backend.heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets the unrunnable limit of tasks submitted without one: such a task ends
    /// [`TaskError::Unrunnable`](crate::TaskError::Unrunnable) once it has waited `limit`
    /// while no connected agent could run it (see
    /// [`RunOptions::unrunnable_limit`](crate::RunOptions::unrunnable_limit)).
    pub fn with_unrunnable_limit(mut self, limit: Duration) -> Self {
        self.default_unrunnable_limit = Some(limit);
        self
    }

    /// Uses this shared secret to authenticate with the server (and for `spawn_server` and
    /// `spawn_client`), instead of the `BLITZEN_SECRET` environment variable.
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.backend.secret = Some(secret);
        self
    }

    /// [`with_secret`](Self::with_secret) with the secret read from a file.
    pub fn with_secret_file(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, DispatchError> {
        Ok(self.with_secret(Secret::from_file(path)?))
    }

    /// Makes [`spawn_server`](Self::spawn_server) keep its state in `dir` (the binary's
    /// `--data-dir`): restarted on the same directory, it keeps its sessions, their queued tasks
    /// and their unfetched results.
    pub fn with_data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.backend.data_dir = Some(dir.into());
        self
    }

    /// With a secret, connects UNENCRYPTED (and makes [`spawn_server`](Self::spawn_server) and
    /// [`spawn_client`](Self::spawn_client) do the same; a server must allow it with
    /// `--insecure-plaintext`): anyone on the path can then read and alter every task and result.
    /// By default, with a secret every connection is TLS 1.3, authenticated by the secret.
    pub fn insecure_plaintext(mut self, plaintext: bool) -> Self {
        self.backend.tls.plaintext = plaintext;
        self
    }

    /// Also requires the server's certificate to have this SHA-256 fingerprint (the server logs
    /// it at start: `"AB:CD:…".parse()?`). The secret authenticates the server either way; a
    /// pin also catches a server with the right secret and the wrong certificate.
    pub fn with_tls_pin(mut self, fingerprint: Fingerprint) -> Self {
        self.backend.tls.verify = Verify::Pin(fingerprint);
        self
    }

    /// Also requires the server's certificate to be issued by a CA in this PEM file and to name
    /// the server's host (for a server started with `--tls-cert`).
    pub fn with_tls_ca(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, TlsError> {
        self.backend.tls.verify = Verify::ca_file(path.as_ref())?;
        Ok(self)
    }

    /// Lets [`spawn_server`](Self::spawn_server) listen on a non-loopback address without a
    /// secret, although then anyone who can reach it can run programs on its agents.
    pub fn allow_insecure(mut self, allow: bool) -> Self {
        self.backend.insecure = allow;
        self
    }

    /// The server address in use.
    pub fn server(&self) -> &str {
        &self.backend.server
    }

    /// Connects now and waits for the handshake, instead of on the first `run`.
    pub fn connect(&self) -> Result<(), DispatchError> {
        let cluster = &self.backend;
        let waiter = {
            let mut link = cluster.link.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*link, LinkState::Idle) {
                *link = LinkState::Up(cluster.start_link()?);
            }
            match &mut *link {
                LinkState::Up(l) => l.connected.take(),
                _ => return Err(DispatchError::ShutDown),
            }
        };
        match waiter.map(|w| w.recv()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(DispatchError::Disconnected("the connection ended".into())),
            _ => Ok(()),
        }
    }

    /// Blocks until the server has taken every task submitted so far (queued it, or refused it
    /// with a result saying why), or `within` has passed. Useful before exiting without
    /// waiting for results, and to pace very large submissions.
    pub fn wait_accepted(&self, within: Duration) -> Result<(), DispatchError> {
        self.backend.handoff.wait_accepted(within)
    }
}

/// `host:port` to one socket address (the first the resolver gives).
fn resolve(server: &str) -> std::io::Result<SocketAddr> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let first = server.to_socket_addrs()?.next();
    first.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
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
