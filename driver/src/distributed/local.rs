//! [`LocalCluster`]: a whole cluster inside one program.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use blitzen_client::AgentConfig;
use blitzen_common::logging;
use blitzen_common::worker::is_unentered_worker;
use blitzen_server::{Server, ServerConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long the agent may take to connect.
const START_LIMIT: Duration = Duration::from_secs(30);

use super::DistributedDispatcher;
use crate::results::DispatchError;

/// A server on 127.0.0.1 (a free port) and an agent whose worker processes are this program,
/// running on a background thread: the whole cluster path — TCP, scheduling, agents, worker
/// processes — in one command. Drivers connect to [`LocalCluster::addr`] as to any server.
///
/// `main` must call [`worker_main`](crate::worker_main) first: the agent's workers are this
/// program re-executed. Dropping the cluster stops it.
#[derive(Debug)]
pub struct LocalCluster {
    addr: String,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl LocalCluster {
    /// Starts a server and an agent with `workers` worker processes, and returns once the
    /// agent's workers are up and connected.
    pub fn start(workers: usize) -> Result<Self, DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        logging::install();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(DispatchError::Runtime)?;
        let config = ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            ..ServerConfig::default()
        };
        let server = runtime
            .block_on(Server::bind(config))
            .map_err(|e| DispatchError::Serve(e.to_string()))?;
        let addr =
            server.local_addr().map_err(|e| DispatchError::Serve(e.to_string()))?.to_string();
        let stop = CancellationToken::new();
        let mut agent = AgentConfig::new(&addr, workers);
        let connected = Arc::new(Notify::new());
        agent.connected = Some(connected.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("blitzen-local-cluster".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serving = tokio::spawn(server.run(token.clone()));
                    tokio::spawn(async move {
                        connected.notified().await;
                        let _ = ready_tx.send(());
                    });
                    if let Err(e) = blitzen_client::run(agent, token.clone()).await {
                        tracing::error!(error = %e, "the local cluster's agent stopped");
                    }
                    token.cancel();
                    let _ = serving.await;
                });
            })
            .map_err(DispatchError::Runtime)?;
        let cluster = Self { addr, stop, thread: Some(thread) };
        // The agent's pool starts before it reports: this waits for the worker processes too.
        if ready.recv_timeout(START_LIMIT).is_err() {
            return Err(DispatchError::Serve(format!(
                "the local cluster's agent did not connect within {START_LIMIT:?}; its log says why"
            )));
        }
        info!(addr = %cluster.addr, workers, "local cluster started");
        Ok(cluster)
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A dispatcher connected to this cluster (on first use).
    pub fn dispatcher(&self) -> DistributedDispatcher {
        DistributedDispatcher::new(&self.addr)
    }

    /// Stops the agent (and its workers) and the server, and waits for them.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_now();
    }
}
