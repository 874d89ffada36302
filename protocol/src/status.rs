//! What the server tells observers about the cluster: [`ClusterStatus`] (agents and their
//! workers, sessions, recent failures), a session's [`Failure`]s, and what a cancel did.
//!
//! The same records are the server's `status --json` output and its dashboard's
//! `/api/status`, so every field is plain data: counts, names, milliseconds.

use serde::{Deserialize, Serialize};

/// Failed tasks the server keeps per session, the oldest dropped first.
pub const FAILURES_KEPT: usize = 1000;

/// Failures of every session shown in [`ClusterStatus::recent_failures`].
pub const RECENT_FAILURES: usize = 20;

/// Seconds of history in [`ServerStatus::finished_per_second`].
pub const HISTORY_SECONDS: usize = 120;

/// The cluster at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The server itself and its totals.
    pub server: ServerStatus,
    /// Connected agents, in the order they connected.
    pub agents: Vec<AgentStatus>,
    /// Sessions the server holds (connected drivers, and departed ones it still keeps).
    pub sessions: Vec<SessionStatus>,
    /// The latest failures of every session, most recent last.
    pub recent_failures: Vec<Failure>,
    /// How the tasks of each name ended since the server started (a Python call's name is
    /// its function's, `__main__.f2`), by name.
    #[serde(default)]
    pub tasks: Vec<TaskCounts>,
    /// After a restart on the data directory: the restored tasks held while the agents that
    /// were connected re-attach. `None` when nothing is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartStatus>,
    /// With `--autoscale`: the agents the server asks its scheduler for, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
}

/// What an autoscaling server does about its agents: the allocations it asked a scheduler for
/// (Slurm jobs, each running one agent), what their agents do, and its last decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    /// The scheduler it asks (`slurm`).
    pub backend: String,
    /// Whether it only prints what it would submit.
    pub dry_run: bool,
    /// Allocations it holds at most at once (pending and running).
    pub max_agents: u32,
    /// Workers of each agent it asks for.
    pub agent_workers: u32,
    /// Allocations asked for that the scheduler has not started.
    pub pending: u32,
    /// Allocations started whose agent has not connected yet.
    pub starting: u32,
    /// Agents of its allocations running tasks.
    pub busy: u32,
    /// Agents of its allocations with nothing to run.
    pub idle: u32,
    /// Agents of its allocations leaving: they take nothing more and finish what they hold.
    pub draining: u32,
    /// Ready tasks (queued, not waiting on inputs) an agent of its shape could run, at the
    /// last decision.
    pub ready: u64,
    /// Allocations asked for since the server started.
    pub submitted: u64,
    /// Submissions that failed in a row (the scheduler refused them); 0 after one succeeds.
    pub failed_submissions: u32,
    /// Allocations that ended without their agent ever connecting, in a row.
    pub failed_allocations: u32,
    /// Why it asks for nothing more until `blitzen-server resume` or a restart, after repeated
    /// failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Milliseconds until it may submit again after a failure (0: now).
    pub backoff_ms: u64,
    /// Its last decision, and why, in words.
    pub last_decision: String,
    /// Milliseconds since that decision.
    pub last_decision_ms: u64,
    /// Every allocation it holds, oldest first.
    pub allocations: Vec<AllocationStatus>,
}

/// One allocation an autoscaling server asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationStatus {
    /// The scheduler's id for it (a Slurm job id).
    pub id: String,
    /// `pending`, `starting` (its agent not connected yet), `busy`, `idle`, `draining`, or
    /// `ending` (its agent left; the scheduler has not ended it yet).
    pub state: String,
    /// Milliseconds since it was asked for.
    pub age_ms: u64,
    /// Its agent's host, once connected.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// Restored tasks held after a restart while the agents connected before it re-attach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartStatus {
    /// Restored tasks no agent has claimed yet: they run nowhere until released.
    pub held: u64,
    /// The agents waited for, by name: connected before the restart, neither back nor known
    /// to have ended.
    pub awaiting: Vec<String>,
    /// How long the server must stay up before the held tasks are queued again whoever is
    /// missing, in milliseconds.
    pub release_in_ms: u64,
    /// How much of the re-attach grace the hold has used, over every restart since it began, in
    /// milliseconds.
    pub grace_used_ms: u64,
}

/// How the tasks of one name ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// The name people see: a task's label, or its registered name.
    pub task: String,
    /// Ended with a value.
    pub done: u64,
    /// Failed (any error but a cancel).
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// The server and its totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's version.
    pub version: String,
    /// How long it has been serving, in milliseconds.
    pub uptime_ms: u64,
    /// Whether it keeps its state in a data directory.
    pub durable: bool,
    /// Tasks waiting at the server for an agent.
    pub queued: u64,
    /// Tasks waiting at the server for other tasks (their inputs) before they are queued.
    #[serde(default)]
    pub waiting: u64,
    /// Tasks handed to agents that wait there for a worker (prefetched, so that workers never
    /// idle between short tasks).
    pub prefetched: u64,
    /// Tasks running on a worker, as the agents last reported (every half second while busy).
    pub running: u64,
    /// Results not yet acknowledged by their drivers.
    pub results_held: u64,
    /// Values shared among tasks that the server holds.
    #[serde(default)]
    pub shared_values: u64,
    /// Their bytes, in all.
    #[serde(default)]
    pub shared_bytes: u64,
    /// Bytes of shared values sent to agents since the server started.
    #[serde(default)]
    pub shared_bytes_sent: u64,
    /// Tasks finished since the server started (any outcome).
    pub finished: u64,
    /// Of those, how many failed (any error but a cancel).
    pub failed: u64,
    /// Of those, how many were cancelled.
    pub cancelled: u64,
    /// Tasks finished per second over the last minute.
    pub throughput: f64,
    /// Tasks finished in each of the last [`HISTORY_SECONDS`] seconds, oldest first; the last
    /// entry is the second in progress.
    pub finished_per_second: Vec<u32>,
}

/// One connected agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The server's number for its connection.
    pub conn: u64,
    /// Its host name.
    pub host: String,
    /// Worker processes it runs.
    pub workers: u32,
    /// Workers running a task, as the agent last reported (every half second while busy).
    pub busy: u32,
    /// Tasks handed to it and not finished (running, or waiting in it for a worker).
    pub held: u64,
    /// Tasks it finished since it connected.
    pub done: u64,
    /// Of those, how many failed (any error but a cancel).
    pub failed: u64,
    /// Milliseconds since it connected.
    pub connected_for_ms: u64,
    /// Milliseconds since the last byte arrived from it (a result or a heartbeat).
    pub last_heard_ms: u64,
    /// Its workers as it last reported them, by pid.
    pub worker_states: Vec<WorkerState>,
    /// What its running tasks may hold at once.
    pub capacity: crate::Capacity,
    /// What its running tasks held when it last reported them (a plain task holds one CPU);
    /// free is `capacity` minus this.
    pub used: crate::Capacity,
    /// Bytes of shared values in its cache.
    #[serde(default)]
    pub cache_used: u64,
    /// The size of its cache.
    #[serde(default)]
    pub cache_size: u64,
    /// The allocation it runs in (a Slurm job id), as it said; empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allocation: String,
    /// Milliseconds until its time limit, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_in_ms: Option<u64>,
    /// Why it is leaving (it takes no more tasks), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<String>,
}

/// One worker process of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Its process id.
    pub pid: u32,
    /// The task it runs, if any.
    pub task: Option<RunningTask>,
}

/// A task running on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningTask {
    /// Its session.
    pub session: String,
    /// Its driver's id for it.
    pub id: u64,
    /// The task's name.
    pub task: String,
    /// How long it has run, in milliseconds (when the agent last reported).
    pub for_ms: u64,
}

/// One session: a driver's tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Its name.
    pub name: String,
    /// Its driver's name (program and pid).
    pub driver: String,
    /// Whether its driver is connected.
    pub connected: bool,
    /// Tasks the server took from it.
    pub submitted: u64,
    /// Waiting at the server for an agent.
    pub queued: u64,
    /// Waiting at the server for other tasks (their inputs) before they are queued.
    #[serde(default)]
    pub waiting: u64,
    /// Handed to agents, waiting there for a worker.
    pub prefetched: u64,
    /// Running on a worker, as the agents last reported.
    pub running: u64,
    /// Finished with a value.
    pub done: u64,
    /// Finished with an error other than a cancel.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Tasks finished per second over the last minute.
    pub throughput: f64,
}

/// A failed task, with its whole error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Its session.
    pub session: String,
    /// Its driver's id for it.
    pub id: u64,
    /// The task's name.
    pub task: String,
    /// The host it ran on, if it reached a worker.
    pub host: Option<String>,
    /// The worker's pid, if it reached one.
    pub pid: Option<u32>,
    /// What kind of failure: `Panicked`, `TimedOut`, `WorkerCrashed`, `Lost`…
    pub kind: String,
    /// The full error: the panic message and location, the exit signal, the stderr tail.
    pub error: String,
    /// When it failed, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CancelReport {
    /// Tasks that were queued: ended `Cancelled` at once.
    pub queued: u64,
    /// Tasks handed to agents: their agents were told (a running one has its worker killed).
    pub running: u64,
    /// Ids of tasks that had already ended, or that the session never had: nothing done.
    pub not_found: u64,
}
