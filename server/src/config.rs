//! [`ServerConfig`]: every setting of a server, with the defaults of the binary.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use blitzen_net::Secrets;
use blitzen_protocol::cluster::DEFAULT_PORT;

/// Everything a server can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Anything but loopback needs [`secrets`](Self::secrets) or
    /// [`allow_insecure`](Self::allow_insecure): [`Server::bind`](crate::Server::bind) refuses
    /// it otherwise.
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
    /// A driver that left without a goodbye keeps its session this long once nothing is held
    /// for it any more, for it (or another process) to reconnect or attach to.
    pub session_ttl: Duration,
    /// A connection must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// Times a task is handed out before it is given up, when its agents keep vanishing.
    pub max_attempts: u32,
    /// A task with a timeout that started on an agent and has not answered by its timeout
    /// plus this is settled by the server (the agent is alive, but the result is not coming).
    pub deadline_grace: Duration,
    /// Secrets peers must prove they know; none: no authentication (loopback only, unless
    /// `allow_insecure`).
    pub secrets: Secrets,
    /// Where the server keeps its state on disk (see the `store` module): with one, a restart
    /// keeps its identity, its sessions, their queued tasks and unfetched results. `None`: in
    /// memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// After a restart on a data directory, the restored tasks wait this long at most for the
    /// agents connected before the restart to re-attach with the ones they are running; once
    /// all are back (or the time is up) the rest are queued again.
    pub reattach_grace: Duration,
    /// Leave connections unencrypted although there are secrets (the binary's
    /// `--insecure-plaintext`): peers must say the same. Without secrets connections are never
    /// encrypted.
    pub plaintext: bool,
    /// A site's certificate chain and private key (PEM files) to present instead of a
    /// self-signed certificate (which is kept in the data directory when there is one).
    pub tls_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Listen on a non-loopback address without secrets, although then anyone who can reach
    /// the port can run programs on the agents (the binary's `--insecure`).
    pub allow_insecure: bool,
    /// Where to serve the web dashboard (`/`, `/api/status`, `/api/events`, `/metrics`,
    /// `/health`), if anywhere. Anything but loopback needs
    /// [`dashboard_token`](Self::dashboard_token), which the page then asks for.
    pub dashboard: Option<std::net::SocketAddr>,
    /// What the dashboard asks every visitor for (not `/health`); `None`: nothing (loopback
    /// only). Plain HTTP carries it: make it a token of its own, never the cluster's secret.
    pub dashboard_token: Option<blitzen_net::Secret>,
    /// Ask a scheduler for agents as ready tasks need them (see [`crate::autoscale`]);
    /// `None`: the agents are started by someone else.
    pub autoscale: Option<crate::autoscale::AutoscaleConfig>,
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
            session_ttl: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            max_attempts: 3,
            deadline_grace: Duration::from_secs(30),
            secrets: Secrets::default(),
            allow_insecure: false,
            data_dir: None,
            reattach_grace: Duration::from_secs(30),
            plaintext: false,
            tls_cert: None,
            dashboard: None,
            dashboard_token: None,
            autoscale: None,
        }
    }
}
