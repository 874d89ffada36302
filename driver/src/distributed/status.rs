//! Asking the server about its cluster, as `blitzen-server status` does: [`cluster_status`]
//! and [`cluster_workers`](Dispatcher::cluster_workers).
//!
//! [`cluster_status`]: Dispatcher::cluster_status

use blitzen_protocol::cluster::{FromObserver, ToObserver};
use blitzen_protocol::status::ClusterStatus;

use super::Cluster;
use crate::dispatcher::Dispatcher;
use crate::error::DispatchError;
use crate::runtime;

impl Dispatcher<Cluster> {
    /// The cluster as the server sees it now (its agents, their workers and capacity, the
    /// queues): what `blitzen-server status --json` prints. Asked on a connection of its own
    /// (with this dispatcher's secret and TLS settings), within the connect timeout. It blocks:
    /// call it from a thread, not from async code.
    pub fn cluster_status(&self) -> Result<Box<ClusterStatus>, DispatchError> {
        let cluster = &self.backend;
        let secret = cluster.secret()?;
        let ask = blitzen_server::observe::ask(
            &cluster.server,
            secret.as_ref(),
            &cluster.tls,
            FromObserver::Status,
            cluster.connect_timeout,
        );
        match runtime::current_thread()?.block_on(ask)? {
            ToObserver::Status(status) => Ok(status),
            _ => Err(DispatchError::Disconnected(
                "the server answered a status request with something else".into(),
            )),
        }
    }

    /// The worker processes of the agents connected now: what "all the cluster's workers"
    /// means at this moment (a `map` sized to keep every worker busy, joblib's `n_jobs=-1`).
    pub fn cluster_workers(&self) -> Result<usize, DispatchError> {
        let status = self.cluster_status()?;
        Ok(status.agents.iter().map(|a| a.workers as usize).sum())
    }
}
