//! [`Event`]: what the connections' tasks tell the core, one variant per message that changes
//! its state.

use blitzen_protocol::Report;
use blitzen_protocol::cluster::{
    FromObserver, Submission, TaskKind, ToAgent, ToDriver, ToObserver, WorkerReport,
};
use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use blitzen_protocol::output::AgentOutput;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::JoiningAgent;

/// What connection tasks report to the core.
#[derive(Debug)]
pub(crate) enum Event {
    /// An agent was admitted.
    AgentJoined {
        conn: ConnId,
        agent: JoiningAgent,
        /// Its connection's writer.
        tx: mpsc::UnboundedSender<ToAgent>,
        /// Cancelled by the core to close the connection (the agent broke the protocol).
        close: CancellationToken,
    },
    /// Finished tasks from an agent.
    AgentDone {
        conn: ConnId,
        results: Vec<Report<TaskKey>>,
        /// Results of tasks assigned on an earlier connection of the agent.
        recovered: bool,
    },
    /// Tasks with a timeout started on the agent's workers.
    AgentStarted { conn: ConnId, keys: Vec<TaskKey> },
    /// An agent re-attached after a restart with the tasks it holds from before, by `seq`.
    AgentReattach { conn: ConnId, seqs: Vec<u64> },
    /// What an agent's workers run now.
    AgentWorkers { conn: ConnId, workers: Vec<WorkerReport> },
    /// Lines streamed tasks printed on an agent.
    AgentOutput { conn: ConnId, output: Vec<AgentOutput> },
    /// An agent sent a heartbeat.
    AgentHeard { conn: ConnId },
    /// An agent takes no more tasks, and leaves once those it holds are done.
    AgentLeaving { conn: ConnId, reason: String },
    /// An agent's connection ended, or it went silent.
    AgentLeft { conn: ConnId, reason: String },
    /// A driver was admitted.
    DriverJoined {
        conn: ConnId,
        name: String,
        /// Its session; one the server knows is taken over by this connection.
        session: String,
        /// A new process attaching to the session: it hears every task the session holds.
        attach: bool,
        /// Its connection's writer.
        tx: mpsc::UnboundedSender<ToDriver>,
    },
    /// New tasks from a driver.
    Submit {
        conn: ConnId,
        /// Kinds new to this connection, appended to its table.
        kinds: Vec<TaskKind>,
        tasks: Vec<Submission>,
    },
    /// A driver cancels some of its tasks.
    Cancel { conn: ConnId, ids: Vec<DriverTaskId> },
    /// A piece of a value a driver shares.
    Share { conn: ConnId, piece: blitzen_protocol::cluster::SharePiece },
    /// A driver no longer shares these values.
    Unshare { conn: ConnId, ids: Vec<u64> },
    /// An observer's request, and where its answer goes.
    Observe { request: FromObserver, reply: oneshot::Sender<ToObserver> },
    /// A driver has these results: the server may forget them.
    Ack { conn: ConnId, ids: Vec<DriverTaskId> },
    /// A driver's connection ended.
    DriverLeft {
        conn: ConnId,
        /// The driver said goodbye: forget everything it had.
        bye: bool,
    },
    /// The data directory holds every change up to this batch.
    Committed { batch: u64 },
    /// The data directory cannot be written (a full disk): the changes wait for a retry.
    SaveFailed { error: String },
    /// The autoscaler asks for the demand for agents of `shape`.
    Demand { shape: blitzen_protocol::Capacity, reply: oneshot::Sender<super::Demand> },
    /// The autoscaler's state after its tick, for the status.
    Autoscaled(Box<blitzen_protocol::status::AutoscaleStatus>),
}
