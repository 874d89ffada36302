//! `blitzen-server`: the task queue and result cache of a Blitzen cluster.
//!
//! Drivers (`blitzen::distributed::DistributedDispatcher`) submit tasks; agents
//! (`blitzen-client`) announce the tasks their binary has and how many workers they run; the
//! server pushes each task to an agent with free capacity and pushes each result back to the
//! driver that submitted it. It never decodes task arguments or results.
//!
//! - [`ServerConfig`]: every setting, with the defaults of the binary.
//! - [`Server`]: bind, then [`Server::run`] until a shutdown token is cancelled.
//! - `core` (private): the single owner of all state — queue, agents, drivers, results.
//! - `session` (private): one task per connection: handshake, frames in, batches out.

mod core;
mod session;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use blitzen_common::auth::Secret;
pub use blitzen_protocol::cluster::DEFAULT_PORT;

/// Everything a server can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Timeout of tasks submitted without one.
    pub default_timeout: Option<Duration>,
    /// Tasks held at most (queued or running); submissions beyond it are refused.
    pub task_limit: usize,
    /// Results nobody fetched are dropped after this long.
    pub result_ttl: Duration,
    /// Results nobody fetched are kept at most this many (the oldest are dropped).
    pub max_results: usize,
    /// A connection must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// Times a task is handed out before it is given up, when its agents keep vanishing.
    pub max_attempts: u32,
    /// A task with a timeout that started on an agent and has not answered by its timeout
    /// plus this is settled by the server (the agent is alive, but the result is not coming).
    pub deadline_grace: Duration,
    /// Secrets peers must prove they know; none: no authentication (loopback only, unless
    /// the binary's `--insecure`).
    pub secrets: Secrets,
}

/// The shared secrets of a cluster: one for agents and one for drivers, so that a worker host
/// can be given a secret that does not let it submit work. Usually both are the same.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// What agents must prove.
    pub agents: Option<Secret>,
    /// What drivers must prove.
    pub drivers: Option<Secret>,
}

impl Secrets {
    /// The same secret for agents and drivers.
    pub fn both(secret: Secret) -> Self {
        Self { agents: Some(secret.clone()), drivers: Some(secret) }
    }

    /// Whether peers are authenticated at all.
    pub fn enabled(&self) -> bool {
        self.agents.is_some() || self.drivers.is_some()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            default_timeout: None,
            task_limit: 10_000_000,
            result_ttl: Duration::from_secs(3600),
            max_results: 1_000_000,
            handshake_timeout: Duration::from_secs(10),
            max_attempts: 3,
            deadline_grace: Duration::from_secs(30),
            secrets: Secrets::default(),
        }
    }
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
}

impl Server {
    /// Binds the listening socket.
    pub async fn bind(config: ServerConfig) -> io::Result<Self> {
        if config.secrets.agents.is_some() != config.secrets.drivers.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a secret for agents needs one for drivers too, and the other way round: a \
                 cluster is authenticated for both or for neither",
            ));
        }
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Ok(Self { listener, config })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then tells every driver and agent and returns once
    /// the goodbyes are queued. Cancel-safe in the sense that cancelling the token is the way to
    /// stop it; dropping the future stops serving without goodbyes.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let addr = self.listener.local_addr()?;
        info!(%addr, authenticated = self.config.secrets.enabled(), "serving");
        let core =
            tokio::spawn(core::Core::new(self.config.clone(), events_rx).run(shutdown.clone()));
        let server_id =
            u64::from_be_bytes(blitzen_common::auth::nonce()?[..8].try_into().unwrap_or_default());
        let shared =
            Arc::new(session::Shared { events: events_tx, config: self.config.clone(), server_id });
        let mut next_conn = 1u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let conn = next_conn;
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
        info!("stopped");
        Ok(())
    }
}
