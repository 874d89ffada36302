//! [`Server`]: the listening socket, the accept loop, and how a server starts and stops —
//! [`Server::bind`] enforces the rules of where it may listen, [`serve_until`] runs one until a
//! duration passes or a signal arrives (the binary and `spawn_server` both use it).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use blitzen_common::cli::termination;
use blitzen_net::OneSidedSecrets;
use blitzen_net::tls::{Identity, TlsAcceptor, TlsError};
use blitzen_protocol::ids::{ConnId, ServerId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ServerConfig;
use crate::core::Core;
use crate::session;
use crate::store::{self, Loaded, Store, StoreError};

/// Why a server cannot serve. None of these is helped by retrying as is.
#[derive(thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound (taken, not local, not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// A non-loopback address without secrets, and insecure serving not allowed.
    #[error(
        "refusing to listen on {ip} without a secret: anyone who can reach it could run \
         programs on your agents; give it a shared secret (--secret-file or BLITZEN_SECRET; \
         with_secret in code), or allow it explicitly (--insecure; allow_insecure(true) in code)"
    )]
    Insecure {
        /// The address asked for.
        ip: IpAddr,
    },
    /// A secret for agents and none for drivers, or the other way round.
    #[error(transparent)]
    OneSided(#[from] OneSidedSecrets),
    /// The runtime or the system failed (no runtime, no randomness for the server's id).
    #[error("cannot serve: {0}")]
    Io(#[from] io::Error),
    /// The data directory cannot be used (in use, another format, corrupt, not writable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS cannot be set up (a certificate or key file that cannot be used).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A dashboard on a non-loopback address with nothing to protect it.
    #[error(
        "refusing to serve the dashboard on {addr} without a token: anyone who can reach it \
         could watch the cluster and read every failure; give it --dashboard-token-file (a \
         token of its own, not the cluster's secret: the dashboard speaks plain HTTP), or \
         serve it on 127.0.0.1"
    )]
    DashboardUnprotected {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The dashboard's address could not be bound.
    #[error("cannot serve the dashboard on {addr}: {source}")]
    DashboardBind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The autoscaler cannot start (arguments it refuses, a job script it cannot write).
    #[error("cannot autoscale: {0}")]
    Autoscale(String),
    /// TLS settings without a secret to authenticate the peers with.
    #[error(
        "--tls-cert and --tls-key need a shared secret (--secret-file or BLITZEN_SECRET): \
         without one, connections are neither authenticated nor encrypted"
    )]
    TlsWithoutSecret,
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A new random id for a run of the server.
fn fresh_server_id() -> io::Result<ServerId> {
    let random = blitzen_net::secret::nonce()?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&random[..8]);
    Ok(ServerId::new(u64::from_be_bytes(id)))
}

/// The server's side of TLS: with secrets, unless `plaintext`. Its certificate is the site's
/// (`tls_cert`), or one of its own, kept in the data directory when there is one (so peers can
/// pin its fingerprint), fresh at each start otherwise.
async fn tls_acceptor(config: &ServerConfig) -> Result<Option<(TlsAcceptor, String)>, ServeError> {
    if !config.secrets.enabled() {
        return match config.tls_cert {
            Some(_) => Err(ServeError::TlsWithoutSecret),
            None => Ok(None),
        };
    }
    if config.plaintext {
        warn!(
            "connections are NOT encrypted (--insecure-plaintext): anyone on the path can read and alter every task and result"
        );
        return Ok(None);
    }
    let (site, dir) = (config.tls_cert.clone(), config.data_dir.clone());
    let identity = tokio::task::spawn_blocking(move || match (site, dir) {
        (Some((cert, key)), _) => Identity::from_pem_files(&cert, &key),
        (None, Some(dir)) => Identity::load_or_generate(&dir),
        (None, None) => Identity::generate(),
    })
    .await
    .map_err(io::Error::other)??;
    let own = if config.tls_cert.is_some() { "the site's" } else { "its own" };
    let fingerprint = identity.fingerprint().to_string();
    info!(%fingerprint, certificate = own, "connections are encrypted (TLS 1.3)");
    Ok(Some((identity.acceptor()?, fingerprint)))
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    /// The open data directory, this run's id, and what the directory held.
    store: Option<(Store, ServerId, Loaded)>,
    /// The server's side of TLS, when connections are encrypted.
    tls: Option<TlsAcceptor>,
    /// Its certificate's SHA-256 fingerprint, when connections are encrypted.
    fingerprint: Option<String>,
    /// The dashboard's socket and the token it asks for, when there is one.
    dashboard: Option<(TcpListener, Option<blitzen_net::Secret>)>,
}

impl Server {
    /// Binds the listening socket, after checking that the configuration is safe to serve:
    /// secrets for both roles or neither, and a loopback address unless there are secrets or
    /// [`ServerConfig::allow_insecure`] says so.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServeError> {
        config.secrets.check()?;
        if !config.bind.is_loopback() && !config.secrets.enabled() && !config.allow_insecure {
            return Err(ServeError::Insecure { ip: config.bind });
        }
        let store = match &config.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                let fresh = fresh_server_id()?;
                let opened = tokio::task::spawn_blocking(move || Store::open(&dir, fresh))
                    .await
                    .map_err(io::Error::other)??;
                Some(opened)
            }
            None => None,
        };
        let (tls, fingerprint) = tls_acceptor(&config).await?.unzip();
        let dashboard = match config.dashboard {
            Some(addr) => {
                // Never the cluster's secret: the page is plain HTTP, so whatever a browser
                // sends crosses the network in the clear.
                let token = config.dashboard_token.clone();
                if !addr.ip().is_loopback() && token.is_none() {
                    return Err(ServeError::DashboardUnprotected { addr });
                }
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::DashboardBind { addr, source })?;
                Some((listener, token))
            }
            None => None,
        };
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = listen(addr).map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener, config, store, tls, fingerprint, dashboard })
    }

    /// The SHA-256 fingerprint of its certificate, when connections are encrypted.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Writes where agents find it — `server=HOST:PORT`, and `fingerprint=…` when connections
    /// are encrypted — to `path`, whole or not at all (a new file renamed over the old), for
    /// `blitzen-client --server-file`. HOST is the address it listens on, or this machine's
    /// host name when it listens on every address.
    pub fn write_address_file(&self, path: &std::path::Path) -> io::Result<()> {
        let addr = self.local_addr()?;
        let mut text = if addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("server={host}:{}\n", addr.port())
        } else {
            format!("server={addr}\n")
        };
        if let Some(fingerprint) = &self.fingerprint {
            text.push_str(&format!("fingerprint={fingerprint}\n"));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let partial = path.with_file_name(format!(".{name}.{}", std::process::id()));
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, path)
    }

    /// The address the dashboard listens on, when there is one.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then tells every driver and agent and returns once
    /// the goodbyes are queued. Cancelling the token is the way to stop it; dropping the future
    /// stops serving without goodbyes.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let addr = self.listener.local_addr()?;
        let mut writer = None;
        let (server_id, durable) = match self.store {
            Some((store, id, loaded)) => {
                info!(
                    sessions = loaded.sessions.len(),
                    tasks = loaded.tasks.len(),
                    results = loaded.results.len(),
                    "state loaded from the data directory"
                );
                let (batches, thread) = store::spawn_writer(store, events_tx.clone())?;
                writer = Some(thread);
                (id, Some((batches, loaded)))
            }
            None => (fresh_server_id()?, None),
        };
        info!(%addr, authenticated = self.config.secrets.enabled(), durable = durable.is_some(), "serving");
        let mut core = Core::new(self.config.clone(), events_rx, durable);
        let mut dashboard = None;
        if let Some((listener, token)) = self.dashboard {
            let rx = core.publish();
            if let Ok(at) = listener.local_addr() {
                info!(url = %format!("http://{at}/"), protected = token.is_some(), "dashboard serving");
            }
            let serving = crate::dashboard::serve(listener, rx, token, shutdown.clone());
            dashboard = Some(tokio::spawn(serving));
        }
        let autoscaler = match &self.config.autoscale {
            Some(auto) => {
                let backend = crate::autoscale::slurm::Slurm::new(auto, server_id.get())
                    .map_err(ServeError::Autoscale)?;
                let (resume, resumed) = mpsc::unbounded_channel();
                core.autoscaler(resume);
                let run = crate::autoscale::run(
                    auto.clone(),
                    Arc::new(backend),
                    events_tx.clone(),
                    resumed,
                    shutdown.clone(),
                );
                Some(tokio::spawn(run))
            }
            None => None,
        };
        let core = tokio::spawn(core.run(shutdown.clone()));
        let shared = Arc::new(session::Shared {
            events: events_tx,
            config: self.config.clone(),
            server_id,
            run: fresh_server_id()?,
            tls: self.tls,
            writers: tokio_util::task::TaskTracker::new(),
        });
        let writers = shared.writers.clone();
        let mut next_conn = 1u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let conn = ConnId::new(next_conn);
                        next_conn += 1;
                        tokio::spawn(session::serve(stream, peer, conn, shared.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(shared);
        let _ = core.await;
        if let Some(autoscaler) = autoscaler {
            // It withdraws the allocations it holds: agents must not outlive their server.
            if tokio::time::timeout(Duration::from_secs(30), autoscaler).await.is_err() {
                warn!("the autoscaler did not withdraw its allocations in time");
            }
        }
        // The core has told every peer and dropped their writers' queues: let the writers send
        // the goodbyes before the runtime goes (a peer that does not read gets 2 s).
        writers.close();
        if tokio::time::timeout(Duration::from_secs(2), writers.wait()).await.is_err() {
            warn!("some connections did not take the server's goodbye in time");
        }
        if let Some(dashboard) = dashboard {
            // Its event streams end with the core; an idle browser connection is not waited for.
            if tokio::time::timeout(Duration::from_secs(2), dashboard).await.is_err() {
                warn!("the dashboard did not stop in time");
            }
        }
        // The core is gone with its sender of batches: the writer commits what it has and
        // closes the database, so the directory is free when this returns.
        if let Some(thread) = writer {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        info!("stopped");
        Ok(())
    }

    /// Serves until `duration` has passed (when given) or Ctrl-C / SIGTERM arrives, then shuts
    /// down cleanly: connected drivers and agents are told.
    pub async fn run_until(self, duration: Option<Duration>) -> Result<(), ServeError> {
        self.run_until_signal(duration, termination()).await
    }

    /// [`run_until`](Self::run_until) with the signal handlers already installed.
    async fn run_until_signal(
        self,
        duration: Option<Duration>,
        termination: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let shutdown = CancellationToken::new();
        let serving = self.run(shutdown.clone());
        tokio::pin!(serving);
        let stop = async {
            match duration {
                Some(d) => tokio::select! {
                    _ = tokio::time::sleep(d) => info!(?d, "duration elapsed"),
                    _ = termination => info!("signal received"),
                },
                None => {
                    termination.await;
                    info!("signal received");
                }
            }
        };
        tokio::select! {
            result = &mut serving => return result,
            _ = stop => shutdown.cancel(),
        }
        serving.await
    }
}

/// Connections the kernel completes and queues while the accept loop is busy. A backlog of 128
/// (what `TcpListener::bind` asks for) overflows when hundreds of agents connect at once, and a
/// connection dropped from a full queue is retried by its peer only a second later. The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with [`LISTEN_BACKLOG`], reusing an address in TIME_WAIT as a restarted
/// server must.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Lets this process hold as many open files as it may: the soft limit, often 1,024, is raised
/// to the hard one. Each agent and each driver is a socket, so a server of 1,000 agents needs
/// more than the usual soft limit.
fn raise_open_files() {
    // SAFETY: `getrlimit` and `setrlimit` read and write one `rlimit`, a plain C structure of
    // two integers that lives on this stack for the duration of each call.
    #[allow(unsafe_code)]
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(before, now = limit.rlim_cur, "open-files limit raised");
            }
        }
    }
}

/// Binds a server with `config` and serves until `duration` or a signal (see
/// [`Server::run_until`]), on a runtime of its own; blocks meanwhile. `listening` is given the
/// server once it is bound (to say where it listens); its error stops it.
pub fn serve_until(
    config: ServerConfig,
    duration: Option<Duration>,
    listening: impl FnOnce(&Server) -> io::Result<()>,
) -> Result<(), ServeError> {
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        // Before anyone hears it listens: a SIGTERM right after stops it cleanly.
        let signals = termination();
        listening(&server)?;
        server.run_until_signal(duration, signals).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_net::{Secret, Secrets};
    use std::net::Ipv4Addr;

    fn config(bind: IpAddr) -> ServerConfig {
        ServerConfig { bind, port: 0, ..ServerConfig::default() }
    }

    #[tokio::test]
    async fn a_public_address_needs_a_secret_or_an_explicit_yes() {
        let public = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let refused = Server::bind(config(public)).await.expect_err("no secret");
        assert!(matches!(refused, ServeError::Insecure { .. }), "{refused}");
        let secret = Secret::new("a secret of enough length", "test").expect("long enough");
        let with_secret = ServerConfig { secrets: Secrets::both(secret.clone()), ..config(public) };
        assert!(Server::bind(with_secret).await.is_ok());
        let allowed = ServerConfig { allow_insecure: true, ..config(public) };
        assert!(Server::bind(allowed).await.is_ok());
        let one_sided = ServerConfig {
            secrets: Secrets { agents: Some(secret), drivers: None },
            ..config(IpAddr::V4(Ipv4Addr::LOCALHOST))
        };
        let refused = Server::bind(one_sided).await.expect_err("one-sided");
        assert!(refused.to_string().contains("only one role"), "{refused}");
    }

    #[tokio::test]
    async fn a_duration_ends_the_server() {
        let server = Server::bind(config(IpAddr::V4(Ipv4Addr::LOCALHOST))).await.expect("bind");
        let limit = Duration::from_secs(10);
        let served = tokio::time::timeout(limit, server.run_until(Some(Duration::from_millis(50))));
        assert!(matches!(served.await, Ok(Ok(()))));
    }
}
