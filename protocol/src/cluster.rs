//! Messages between `blitzen-server`, its agents (`blitzen-client`) and drivers
//! (`DistributedDispatcher`), over TCP.
//!
//! Every connection starts with a handshake: the peer sends [`Hello`] (protocol version, role
//! and a fresh nonce). A server with a shared secret answers [`Challenge`] (its nonce and its
//! proof of the secret), the peer checks it and answers [`Proof`]; then, or at once without a
//! secret, the server answers [`Welcome`] or [`Refusal`] and, on refusal, closes. After that an
//! agent speaks [`FromAgent`] and hears [`ToAgent`]; a driver speaks [`FromDriver`] and hears
//! [`ToDriver`]. Everything is batched: one frame carries as many tasks or results as were
//! ready. The server never decodes task arguments or results: they are opaque [`Bytes`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::finished::Report;
use crate::ids::{ConnId, DriverTaskId, KindIndex, ServerId, TaskKey};
use crate::inputs::Inputs;
use crate::output::{AgentOutput, TaskOutput};

mod kinds;
mod observer;

use crate::resources::{Capacity, Request};
pub use kinds::{AgentSignature, Mismatch, TaskKind};
pub use observer::{FromObserver, ToObserver};

/// Bumped whenever a message below changes incompatibly.
pub const CLUSTER_PROTOCOL_VERSION: u32 = 15;

/// The server's port when none is given.
pub const DEFAULT_PORT: u16 = 7464;

/// Largest frame accepted before the handshake completes.
pub const HANDSHAKE_FRAME_LEN: usize = 64 * 1024;

/// The very first message of every connection, from the connecting side, in the clear: its
/// version and whether it encrypts. Nothing else about the peer travels before the server's
/// [`PrefaceReply`]; when they encrypt, the [`Hello`] comes inside TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preface {
    /// [`CLUSTER_PROTOCOL_VERSION`] of the peer.
    pub version: u32,
    /// Whether the peer wants TLS (it has a secret, and did not turn encryption off).
    pub encrypt: bool,
}

/// The server's answer to a [`Preface`], in the clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PrefaceReply {
    /// Both sides start TLS 1.3 now; the [`Hello`] follows inside it.
    StartTls,
    /// The [`Hello`] follows in the clear (neither side encrypts).
    Plain,
    /// The server refuses (another version, or they disagree on encryption) and closes.
    Refusal(Refusal),
}

/// The second message of every connection (inside TLS when they encrypt), from the connecting
/// side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`CLUSTER_PROTOCOL_VERSION`] of the peer.
    pub version: u32,
    /// Who is connecting.
    pub role: Role,
    /// A fresh random nonce for authentication.
    #[serde(default)]
    pub nonce: Bytes,
}

/// The server's challenge when it has a secret: its nonce, and its proof that it knows the
/// secret (an HMAC over both nonces, the role and, with TLS, the session's keying material).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// The server's fresh nonce.
    pub nonce: Bytes,
    /// The server's proof.
    pub proof: Bytes,
}

/// The peer's answer to a [`Challenge`]: its proof that it knows the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    /// The peer's proof.
    pub proof: Bytes,
}

/// Who is connecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// An agent offering worker processes.
    Agent {
        /// Its host name, for messages.
        host: String,
        /// Worker processes it runs.
        workers: u32,
        /// The tasks compiled into its binary.
        tasks: Vec<TaskKind>,
        /// How often it sends something (a heartbeat when idle), in milliseconds: the server
        /// counts it lost after about three intervals of silence. 0: never counted lost.
        #[serde(default)]
        heartbeat_ms: u64,
        /// The agent process, the same on each of its connections (random, nonzero): a new
        /// connection with the id of one the server still holds replaces it. 0: none.
        #[serde(default)]
        agent_id: u64,
        /// The id of the agent process this one replaces: the last process that ran as an agent
        /// of the same name on this machine, which has ended (the agent knows it by the lock it
        /// took over). A server waiting for that one after a restart stops waiting. 0: none.
        #[serde(default, skip_serializing_if = "is_zero")]
        replaces: u64,
        /// What its running tasks may hold at once; `None`: one CPU per worker, memory
        /// unbounded, no counted resources.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<Capacity>,
        /// How many bytes of shared values it keeps for its tasks at most (`--cache-size`);
        /// 0: the server's default.
        #[serde(default, skip_serializing_if = "is_zero")]
        cache_size: u64,
        /// Milliseconds until the agent stops by itself (its time limit, as when a batch
        /// scheduler ends its job); 0: none. The server sends it no task expected to outlast
        /// that (by its timeout, or how long its kind has taken).
        #[serde(default, skip_serializing_if = "is_zero")]
        ends_in_ms: u64,
        /// The allocation it runs in, as its scheduler names it (a Slurm job id); empty: none.
        /// Tells an autoscaling server which of the jobs it asked for this agent is.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        allocation: String,
    },
    /// A driver submitting tasks.
    Driver {
        /// A name for logs (program name and pid).
        name: String,
        /// The driver's session: a connection naming a session the server knows takes it over,
        /// with its tasks and the results it is owed (the driver reconnected).
        #[serde(default)]
        session: String,
        /// A new process attaching to the session: the server lists the session's tasks in its
        /// [`ToDriver::Session`] reply.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        attach: bool,
        /// How often each side sends something (a heartbeat when idle), in milliseconds, both
        /// ways: each counts the other gone after about three intervals without a byte.
        /// 0: neither is ever counted gone for silence.
        #[serde(default)]
        heartbeat_ms: u64,
    },
    /// A person's tool (`blitzen-server status`, `cancel`): asks about the cluster and
    /// cancels tasks of any session. Proves the drivers' secret.
    Observer {
        /// A name for logs (program name and pid).
        name: String,
    },
}

/// The server's answer to a [`Hello`] it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`CLUSTER_PROTOCOL_VERSION`] of the server.
    pub version: u32,
    /// The id the server gives this connection, for logs.
    pub connection: ConnId,
    /// Tasks the server holds at most at once (submissions beyond are refused).
    pub task_limit: u64,
    /// The server's identity: random for each run, or kept in its data directory across
    /// restarts. A driver that reconnects to the same identity finds its session there.
    #[serde(default)]
    pub server_id: ServerId,
    /// Random for each run of the server, data directory or not: an agent that reconnects to
    /// the same run may deliver the results it finished while disconnected
    /// ([`FromAgent::Recovered`]). The task keys of another run mean nothing: an agent that finds
    /// the same `server_id` with another run re-attaches, naming its tasks by
    /// [`Assignment::seq`] ([`FromAgent::Reattach`]).
    #[serde(default)]
    pub run: ServerId,
}

/// The server's answer to a [`Hello`] it refuses; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why.
    pub reason: String,
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted.
    Welcome(Welcome),
    /// Refused.
    Refusal(Refusal),
    /// Prove that you know the secret (answer with [`Proof`]).
    Challenge(Challenge),
}

/// One task submitted by a driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The driver's own id for the task.
    pub id: DriverTaskId,
    /// What to run: an index into the kinds this connection has declared (see
    /// [`FromDriver::Submit`]).
    pub kind: KindIndex,
    /// MessagePack-encoded arguments, opaque to the server.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub args: Bytes,
    /// Limit on the run time in milliseconds, counted from the start on a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Times to run it again when it crashes its worker or times out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// How long, in milliseconds, the task may wait while no connected agent can run it before
    /// it ends [`Outcome::Unrunnable`](crate::Outcome::Unrunnable); `None`: for as long as it
    /// takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrunnable_limit_ms: Option<u64>,
    /// What it waits for before it can run: other tasks' results standing among its
    /// arguments (then `args` is empty), or their ends. The server holds it until those are
    /// in, then splices its arguments and queues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<Inputs>>,
}

/// Fields at their default are left out of the per-task messages (they are read back as the
/// default): every byte there is paid once per task.
fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// Driver → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromDriver {
    /// A piece of a value to share among tasks ([`InputPart::Shared`](crate::inputs::InputPart)
    /// names it by the driver's number), before the tasks that take it.
    Share(SharePiece),
    /// Shared values no new task will take: the server forgets each once no task holds it.
    Unshare(Vec<u64>),
    /// New tasks, in submission order.
    Submit {
        /// Kinds of task this connection has not declared before, appended in order to its table
        /// of kinds: the first kind a connection declares is number 0. Names and signatures
        /// thus cross the network once per connection, not once per task.
        kinds: Vec<TaskKind>,
        /// The tasks.
        tasks: Vec<Submission>,
    },
    /// These results were received: the server may forget them.
    Ack(Vec<DriverTaskId>),
    /// Cancel these tasks of the session: a queued one ends `Cancelled`, a running one has its
    /// worker killed. Ids of tasks that already ended are ignored (the first final state wins).
    Cancel(Vec<DriverTaskId>),
    /// The driver is done; the server forgets what it still holds for it.
    Bye,
    /// Nothing else to say: the driver is alive.
    Heartbeat,
}

/// Server → driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToDriver {
    /// The server has taken this many of the session's tasks so far (queued, or refused
    /// with a report): sent after each turn that took some.
    Accepted {
        /// Tasks taken since the session started.
        count: u64,
    },
    /// The first message on a driver's connection: the state of its session.
    Session {
        /// Whether the server knew the session (the driver reconnected): every result it is owed
        /// follows.
        resumed: bool,
        /// Tasks of the session the server has taken so far, over all its connections: the
        /// driver sends again what it submitted beyond them.
        accepted: u64,
        /// For a driver that attaches: every task of the session still queued, running, or
        /// with a result not yet acknowledged.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<DriverTaskId>,
        /// For a driver that attaches: above every task id the session has used.
        #[serde(default)]
        next_id: u64,
        /// The shared values of the session the server holds, by the driver's number: a
        /// reconnecting driver sends again those it still shares and the server lacks.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<u64>,
    },
    /// Finished tasks.
    Results(Vec<Report<DriverTaskId>>),
    /// These tasks wait because no connected agent can run them: noted, to say why when a
    /// wait for them ends without them. Sent when they are submitted, or when the last agent
    /// that could run them left.
    Waiting {
        /// The driver's ids.
        ids: Vec<DriverTaskId>,
        /// Why, for the user.
        reason: String,
    },
    /// Tasks have waited this long because no connected agent can run them: a warning,
    /// repeated with growing intervals while it lasts.
    Stalled {
        /// How many of the driver's tasks wait for this reason.
        tasks: u64,
        /// Since when, in milliseconds.
        waited_ms: u64,
        /// Why, for the user.
        reason: String,
    },
    /// The server is stopping: unfinished tasks will not finish.
    ShuttingDown {
        /// Why.
        reason: String,
    },
    /// Nothing else to say: the server is alive.
    Heartbeat,
    /// Lines streamed tasks printed, as they run; each task's come before its result.
    Output(Vec<TaskOutput>),
    /// A kind this connection declared has no connected agent with its signature, though
    /// agents have a task of its name: sent when it is declared, and again whenever an agent
    /// joins while it lasts.
    Mismatch(Mismatch),
}

/// A task sent to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The server's key for the task.
    pub key: TaskKey,
    /// What to run: an index into the tasks the agent announced in its [`Hello`].
    pub kind: KindIndex,
    /// MessagePack-encoded arguments.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub args: Bytes,
    /// Limit on the run time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Times to run it again when it crashes its worker or times out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The task's number in the server's data directory, the same across the server's restarts
    /// (absent without a data directory): an agent re-attaching to the restarted server names
    /// the tasks it holds by it ([`FromAgent::Reattach`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What it holds while it runs (its kind's request); `None`: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Box<Request>>,
    /// Send what it prints as it runs ([`FromAgent::Output`]); its kind is streamed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Its arguments part by part, when some are shared values (by the server's key, each
    /// sent to the agent before with [`ToAgent::Share`]); `args` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<Inputs>>,
}

/// One piece of a shared value on its way: values larger than a frame travel in pieces of at
/// most [`SHARE_PIECE`] bytes, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharePiece {
    /// The value: the driver's number for it (driver → server), or the server's key (server →
    /// agent).
    pub id: u64,
    /// Its whole length.
    pub total: u64,
    /// Where this piece starts in it.
    pub offset: u64,
    /// The piece.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub bytes: Bytes,
}

/// The largest piece of a shared value in one message.
pub const SHARE_PIECE: usize = 16 * 1024 * 1024;

impl SharePiece {
    /// `bytes`, the value `id`, in pieces.
    pub fn split(id: u64, bytes: &Bytes) -> Vec<SharePiece> {
        let total = bytes.len() as u64;
        if bytes.is_empty() {
            return vec![SharePiece { id, total, offset: 0, bytes: Bytes::new() }];
        }
        (0..bytes.len())
            .step_by(SHARE_PIECE)
            .map(|at| SharePiece {
                id,
                total,
                offset: at as u64,
                bytes: bytes.slice(at..(at + SHARE_PIECE).min(bytes.len())),
            })
            .collect()
    }
}

/// Server → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Tasks to run.
    Run(Vec<Assignment>),
    /// A piece of a shared value that tasks sent next take: the agent keeps it in its cache.
    Share(SharePiece),
    /// Shared values the agent may forget (no task it holds takes them).
    Unshare(Vec<u64>),
    /// The server is stopping; the agent should wait and reconnect.
    ShuttingDown {
        /// Why.
        reason: String,
    },
    /// Nothing else to say: the server is alive.
    Heartbeat,
    /// The server has these results: the agent may forget them. Until then it keeps each, and
    /// sends it again (as recovered) on its next connection to the same server.
    Ack(Vec<TaskKey>),
    /// The answer to [`FromAgent::Reattach`]: the tasks the agent keeps, each as
    /// `(seq, key in this run)`. It drops the others: they are queued again, or ended.
    Reattached(Vec<(u64, TaskKey)>),
    /// Cancel these tasks: one waiting for a worker ends `Cancelled`, a running one has its
    /// worker killed. Each is still answered with exactly one result.
    Cancel(Vec<TaskKey>),
    /// The answer to [`FromAgent::Leaving`]: no task follows this message. The agent finishes
    /// those it holds, delivers their results, and closes.
    Released,
}

/// Agent → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    /// Finished tasks, each assigned on this connection.
    Done(Vec<Report<TaskKey>>),
    /// Tasks assigned on an earlier connection to the same run of the server (same
    /// [`Welcome::run`]) that finished while the agent was disconnected. The server has
    /// handed them out again meanwhile: it keeps the first result of each task and drops the
    /// others.
    Recovered(Vec<Report<TaskKey>>),
    /// These tasks (assigned on this connection, with a timeout) started on a worker: the
    /// server holds each to its timeout plus a grace period.
    Started(Vec<TaskKey>),
    /// Still alive (sent when nothing else was sent for a while).
    Heartbeat,
    /// The first message to a server that restarted on its data directory (the same
    /// [`Welcome::server_id`], another [`Welcome::run`]): the tasks this agent holds from the
    /// server's previous run, by [`Assignment::seq`] — running, waiting for a worker, or finished
    /// with a result the server never acknowledged. Answered by [`ToAgent::Reattached`].
    Reattach(Vec<u64>),
    /// What each worker runs now (sent every half second while any runs, and once when all
    /// went idle): for the server's status and dashboard.
    Workers(Vec<WorkerReport>),
    /// Lines streamed tasks (assigned on this connection) printed, as they run; each task's
    /// come before its result.
    Output(Vec<AgentOutput>),
    /// The agent takes no more tasks (it was idle for its idle timeout, reached its time
    /// limit, or was told to stop), and leaves once those it holds are done: answered by
    /// [`ToAgent::Released`]. Its connection's end is then a departure, not a loss.
    Leaving {
        /// Why, in words, for the server's log.
        reason: String,
    },
}

/// One worker of an agent, as it reports it ([`FromAgent::Workers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Its process id.
    pub pid: u32,
    /// The task it runs (assigned on the current connection) and for how long, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<(TaskKey, u64)>,
}

#[cfg(test)]
mod tests;
