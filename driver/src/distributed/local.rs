//! [`LocalCluster`]: a whole cluster inside one program.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use blitzen_client::AgentConfig;
use blitzen_common::logging;
use blitzen_common::pool::PoolError;
use blitzen_common::worker::is_unentered_worker;
use blitzen_protocol::Capacity;
use blitzen_server::{Server, ServerConfig};
use tokio::sync::Notify;
use tracing::info;

use super::DistributedDispatcher;
use crate::error::DispatchError;
use crate::runtime::{self, RuntimeThread};

/// How long the agent may take to connect.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A server on 127.0.0.1 (a free port) and an agent whose worker processes are this program,
/// running on a background thread: the whole cluster path — TCP, scheduling, agents, worker
/// processes — in one command. Drivers connect to [`LocalCluster::addr`] as to any server.
///
/// `main` must call [`worker_main`](crate::worker_main) first: the agent's workers are this
/// program re-executed. Dropping the cluster stops it.
#[derive(Debug)]
pub struct LocalCluster {
    /// The server's address.
    addr: String,
    /// Runs the server and the agent; stopping it stops both.
    thread: RuntimeThread,
}

impl LocalCluster {
    /// Starts a server and an agent with `workers` worker processes, and returns once the
    /// agent's workers are up and connected.
    pub fn start(workers: usize) -> Result<Self, DispatchError> {
        Self::start_with(workers, None, None)
    }

    /// [`start`](Self::start), the agent offering `capacity` (CPUs, memory, counted resources)
    /// instead of one CPU per worker and the machine's memory.
    pub fn start_offering(workers: usize, capacity: Capacity) -> Result<Self, DispatchError> {
        capacity.validate().map_err(PoolError::BadCapacity)?;
        Self::start_with(workers, None, Some(capacity))
    }

    /// [`start`](Self::start), with a server that keeps its state in `dir` (the binary's
    /// `--data-dir`): started again on the same directory, the cluster keeps its sessions, their
    /// queued tasks and their unfetched results, which a driver fetches by
    /// [`attach`](DistributedDispatcher::attach)ing to its session at the new
    /// [`addr`](Self::addr). A directory it cannot use is [`DispatchError::Serve`].
    pub fn start_with_data_dir(
        workers: usize,
        dir: impl Into<std::path::PathBuf>,
    ) -> Result<Self, DispatchError> {
        Self::start_with(workers, Some(dir.into()), None)
    }

    fn start_with(
        workers: usize,
        data_dir: Option<std::path::PathBuf>,
        capacity: Option<Capacity>,
    ) -> Result<Self, DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        logging::install();
        let runtime = runtime::multi_thread(2)?;
        let config = ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            data_dir,
            // Its agent restarts with it: after a restart there is none to wait for.
            reattach_grace: Duration::ZERO,
            ..ServerConfig::default()
        };
        let server = runtime.block_on(Server::bind(config))?;
        let addr = server.local_addr().map_err(blitzen_server::ServeError::from)?.to_string();
        let mut agent = AgentConfig::new(&addr, workers);
        agent.pool.capacity = capacity;
        let connected = Arc::new(Notify::new());
        agent.connected = Some(connected.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = RuntimeThread::spawn("blitzen-local-cluster", runtime, |stop| async move {
            let serving = tokio::spawn(server.run(stop.clone()));
            tokio::spawn(async move {
                connected.notified().await;
                let _ = ready_tx.send(());
            });
            if let Err(e) = blitzen_client::run(agent, stop.clone()).await {
                tracing::error!(error = %e, "the local cluster's agent stopped");
            }
            stop.cancel();
            let _ = serving.await;
        })?;
        // The agent's pool starts before it reports: this waits for the worker processes too.
        if ready.recv_timeout(START_LIMIT).is_err() {
            return Err(DispatchError::LocalAgentMissing(START_LIMIT));
        }
        info!(%addr, workers, "local cluster started");
        Ok(Self { addr, thread })
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A dispatcher connected to this cluster (on first use).
    pub fn dispatcher(&self) -> DistributedDispatcher {
        DistributedDispatcher::new(&self.addr)
    }

    /// Stops the agent (and its workers) and the server, and waits for them; dropping the
    /// cluster does the same.
    pub fn shutdown(self) {
        self.thread.stop();
    }
}
