//! The server's single owner: the queue, the agents, the drivers and the results.
//!
//! Connection tasks turn frames into [`Event`]s; [`Core::run`] handles them one at a time, so
//! no state is shared and nothing is locked. Each turn handles every event already waiting,
//! then [`Core::end_turn`] assigns work and sends each connection one batch.
//!
//! This file holds the state, the event loop and the end of the server; the rest is split by
//! concern, each file an `impl Core` block:
//! - `drivers`: drivers joining and leaving, results on their way back; `submit`: their
//!   submissions.
//! - `agents`: agents joining and leaving, their results; `deadlines`: started tasks an agent
//!   does not answer for, settled by the server.
//! - `kinds`: the kinds of task declared, each interned once, with its base (what agents run).
//! - `dispatch`: assigning queued tasks to agents with credit, and flushing every outbox.
//! - `event`: [`Event`], what the connections tell the core.
//! - `durable`: the state loaded from the data directory, and the changes saved to it.
//! - `reattach`: after a restart, agents re-attaching with the tasks they hold from before.
//! - `graph`: tasks waiting for others' results or ends before they are queued; `parked`: their
//!   inputs, compact.
//! - `shares`: values many tasks take, stored once and sent to each agent once.
//! - `waiting`: tasks no connected agent can run: repeated warnings, and giving up.
//! - `mismatch`: drivers told when no agent has their kind's signature, each agent's own.
//! - `output`: lines streamed tasks print, from agents to drivers, within a budget.
//! - `demand`: what an autoscaler asks at each tick — ready tasks, agents — and its state.
//! - `steer`: what observers ask: the status, a session's failures, cancels (drivers cancel
//!   their own tasks here too).
//! - `counters`: what is counted for observers (rates, outcomes, failures), leaf types; `stats`:
//!   counting each result into them, and the status built from them.
//! - `tasks`: [`TaskTable`], the slab of every task held; `cache`: [`ResultCache`], the results
//!   not yet acknowledged.
//!
//! Scheduling is push-based: an agent has credit for its workers plus as many again, and, once
//! its tasks have shown how long they take, for about `WORK_WINDOW` plus a round trip to it of
//! expected work per worker (up to `MAX_CREDIT`), so tiny tasks stream across the network
//! without gaps, a distant agent's workers do not idle waiting for the next task, and long ones
//! never pile up behind one agent as another idles. Within a driver, tasks run in submission
//! order; between drivers, assignments go round-robin. A task goes only to an agent whose binary
//! has the task's name *and* signature; a task no connected agent can run waits, and its driver
//! is told why.
//!
//! Resources: an agent advertises CPUs, memory and counted resources; each task it holds holds
//! its kind's request (a plain task one CPU) until its result arrives. A task with a request
//! goes only to an agent whose free share covers it. When the oldest task an agent could run
//! does not fit yet, the agent is *reserved* for it: it gets nothing else until that task fits
//! (its running tasks drain), so a stream of small tasks cannot starve a large one; other
//! agents carry on. A task that no connected agent could ever fit is stranded like one no agent
//! has (see `waiting`). The agent's own pool enforces the same capacity again.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use std::sync::Arc;

use blitzen_protocol::cluster::{TaskKind, ToAgent, ToDriver, ToObserver};
use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use blitzen_protocol::{Report, Unstreamed};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ServerConfig;
use crate::dashboard::Snapshot;
use crate::store::{Batches, Change, Loaded};

mod agents;
mod cache;
mod counters;
mod deadlines;
mod demand;
mod dispatch;
mod drivers;
mod durable;
mod event;
mod graph;
mod kinds;
mod mismatch;
mod output;
mod parked;
mod reattach;
mod shares;
mod stats;
mod steer;
mod submit;
mod tasks;
mod waiting;

use agents::Agent;
use cache::ResultCache;
use counters::ServerStats;
use deadlines::Deadline;
use drivers::Driver;
use graph::Graph;
use reattach::Restart;
use shares::Shares;
use tasks::{DriverKey, TaskTable};
use waiting::{GiveUp, Stranded};

pub(crate) use agents::JoiningAgent;
pub(crate) use demand::{AgentView, Demand};
pub(crate) use kinds::KindId;
use kinds::KindKey;

pub(crate) use event::Event;

/// The server's state, owned by the one task that runs [`Core::run`].
pub(crate) struct Core {
    /// The server's settings: limits, default timeout, grace periods.
    config: ServerConfig,
    /// Events from the connection tasks; the loop ends when every sender is gone.
    events: mpsc::UnboundedReceiver<Event>,
    /// Every kind of task any connection has declared, once each; a [`KindId`] indexes it.
    /// Never shrinks: a server meets few distinct kinds in its life. A driver's kind carries
    /// what its tasks ask for: one name with two requests is two kinds here, each queued on its
    /// own, and both the same *base* kind (the name and signature alone) to agents.
    kinds: Vec<TaskKind>,
    /// The base kind of each of `kinds` (itself for a kind without a request).
    bases: Vec<KindId>,
    /// `kinds` by all they are, to intern a declaration.
    kind_ids: HashMap<KindKey, KindId>,
    /// Every task held, queued or running, until it ends; its key names it everywhere else.
    tasks: TaskTable,
    /// Held tasks waiting for others (their inputs), not queued yet.
    graph: Graph,
    /// Values shared among tasks, and the tasks that take them.
    shares: Shares,
    /// The next task's `Task::seq`: submission order across the server.
    next_seq: u64,
    /// The next driver's key: one per session, counted from 1, never reused.
    next_driver: u64,
    /// Connected drivers, and departed ones the server still holds tasks or results for, by
    /// their key (what tasks and results name them by).
    drivers: HashMap<DriverKey, Driver>,
    /// Drivers by session, for a reconnecting driver to take its session over.
    sessions: HashMap<String, DriverKey>,
    /// The driver each live driver connection serves.
    connections: HashMap<ConnId, DriverKey>,
    /// Drivers in round-robin order (the front one is served next); the same set as `drivers`.
    rotation: VecDeque<DriverKey>,
    /// Connected agents. A task's `agent` always names one of these or none.
    agents: HashMap<ConnId, Agent>,
    /// Results not yet acknowledged, within the caps on age and number.
    cache: ResultCache,
    /// When started tasks with a timeout are settled if their agent has not answered; stale
    /// entries (the task ended, or moved) are skipped when they come up.
    deadlines: BinaryHeap<Deadline>,
    /// Kinds with queued tasks that no connected agent can run.
    stranded: HashMap<KindId, Stranded>,
    /// Queued tasks that did not fit on the agent that would run them next, each with that
    /// agent, which takes nothing else until it fits (see `dispatch`).
    reservations: HashMap<TaskKey, ConnId>,
    /// Lines of running tasks not sent to their drivers, by stream (see `output`).
    unstreamed: Unstreamed<TaskKey>,
    /// Strandings so far: the last one's episode number.
    episodes: u64,
    /// When queued tasks with an unrunnable limit give up; stale entries (the task started,
    /// ended, or its kind became runnable since) are skipped when they come up.
    give_ups: BinaryHeap<GiveUp>,
    /// The data directory's writer and the changes of this turn, when there is one.
    durable: Option<Durable>,
    /// After a restart: the restored tasks held back while the agents re-attach.
    restart: Option<Restart>,
    /// Tasks cancelled while an agent holds them, until they end: one whose agent vanishes
    /// ends `Cancelled` instead of running again.
    cancelling: HashSet<TaskKey>,
    /// What is counted for observers.
    stats: ServerStats,
    /// Where the cluster's snapshot goes once a second, for the dashboard.
    publish: Option<watch::Sender<Arc<Snapshot>>>,
    /// With a data directory: queued tasks cancelled in batch `.0`, told to their drivers once
    /// it is saved.
    unsaved_cancels: Vec<(u64, DriverKey, Report<DriverTaskId>, KindId)>,
    /// With a data directory: answers to observers' cancels, sent once batch `.0` is saved.
    unsaved_replies: Vec<(u64, oneshot::Sender<ToObserver>, ToObserver)>,
    /// When the results of tasks that others waited on go to their drivers at the latest
    /// (see `Driver::later`).
    later_due: Option<Instant>,
    /// What the autoscaler last said of itself, for the status (see `demand`).
    autoscale: Option<Box<blitzen_protocol::status::AutoscaleStatus>>,
    /// With an autoscaler: the allocations whose agents connected since it last asked.
    joined_allocations: Vec<String>,
    /// With an autoscaler: where an observer's order to resume goes.
    resume_autoscaler: Option<mpsc::UnboundedSender<()>>,
}

/// How often the dashboard's snapshot is made.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Changes on their way to the data directory (see `store`).
pub(crate) struct Durable {
    /// The writer thread's queue of batches.
    tx: Batches,
    /// Changes of the turn so far: batch `next_batch` once the turn ends.
    changes: Vec<Change>,
    /// The number of the batch being gathered.
    next_batch: u64,
    /// Why the last commit failed, until one succeeds: new tasks are refused meanwhile.
    failure: Option<String>,
    /// Kinds saved so far: those numbered below this (a kind's number is its [`KindId`]).
    kinds_saved: u32,
    /// Tasks numbered (`seq`) below this are on disk. An agent is sent no other: a server
    /// killed before saving a task would not know it again, its driver would submit it again,
    /// and it would run twice.
    committed_seq: u64,
    /// Batches sent to the writer and not committed yet, each with the `seq` below which its
    /// commit puts every task on disk.
    seq_at: VecDeque<(u64, u64)>,
}

impl Core {
    /// A core; with a data directory's writer and what the directory held, it starts from
    /// that state: the sessions as departed drivers, their tasks queued, their results held.
    pub(crate) fn new(
        config: ServerConfig,
        events: mpsc::UnboundedReceiver<Event>,
        durable: Option<(Batches, Loaded)>,
    ) -> Self {
        let (durable, loaded) = match durable {
            Some((tx, loaded)) => (
                Some(Durable {
                    tx,
                    changes: Vec::new(),
                    next_batch: 1,
                    failure: None,
                    kinds_saved: 0,
                    committed_seq: 0,
                    seq_at: VecDeque::new(),
                }),
                Some(loaded),
            ),
            None => (None, None),
        };
        let mut core = Self {
            cache: ResultCache::new(config.result_ttl, config.max_results),
            config,
            events,
            kinds: Vec::new(),
            bases: Vec::new(),
            kind_ids: HashMap::new(),
            unstreamed: Unstreamed::default(),
            tasks: TaskTable::default(),
            graph: Graph::default(),
            shares: Shares::default(),
            next_seq: 0,
            next_driver: 1,
            drivers: HashMap::new(),
            sessions: HashMap::new(),
            connections: HashMap::new(),
            rotation: VecDeque::new(),
            agents: HashMap::new(),
            deadlines: BinaryHeap::new(),
            stranded: HashMap::new(),
            reservations: HashMap::new(),
            episodes: 0,
            give_ups: BinaryHeap::new(),
            durable,
            restart: None,
            cancelling: HashSet::new(),
            stats: ServerStats::new(),
            publish: None,
            unsaved_cancels: Vec::new(),
            unsaved_replies: Vec::new(),
            later_due: None,
            autoscale: None,
            joined_allocations: Vec::new(),
            resume_autoscaler: None,
        };
        if let Some(loaded) = loaded {
            core.restore(loaded);
        }
        if let Some(durable) = &mut core.durable {
            durable.committed_seq = core.next_seq;
        }
        core
    }

    /// Observers' orders to resume autoscaling go to `tx`.
    pub(crate) fn autoscaler(&mut self, tx: mpsc::UnboundedSender<()>) {
        self.resume_autoscaler = Some(tx);
    }

    /// From now on, publishes a snapshot of the cluster once a second, for the dashboard:
    /// the receiver holds the latest.
    pub(crate) fn publish(&mut self) -> watch::Receiver<Arc<Snapshot>> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::new(self.status())));
        self.publish = Some(tx);
        rx
    }

    /// Serves until `shutdown` is cancelled, then tells every peer and returns.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let expiry = self.cache.next_expiry();
            let deadline = self.deadlines.peek().map(|d| d.at);
            let waiting = self.next_waiting_timer();
            let acks = self.next_ack_due();
            let release = self.next_release();
            let later = self.later_due;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = sleep_until(expiry), if expiry.is_some() => self.expire_results(),
                _ = sleep_until(deadline), if deadline.is_some() => self.settle_overdue(),
                _ = sleep_until(waiting), if waiting.is_some() => {
                    self.on_waiting_timer(Instant::now());
                }
                _ = sleep_until(release), if release.is_some() => self.on_release_timer(),
                _ = publish.tick(), if self.publish.is_some() => self.publish_status(),
                // Acknowledgements held back go out at the end of this turn.
                _ = sleep_until(acks), if acks.is_some() => {}
                // So do results of tasks others waited on.
                _ = sleep_until(later), if later.is_some() => {}
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
            }
            self.end_turn();
        }
        self.shut_down();
    }

    /// Handles one event.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::AgentJoined { conn, agent, tx, close } => {
                self.agent_joined(conn, agent, tx, close)
            }
            Event::AgentDone { conn, results, recovered } => {
                self.agent_done(conn, results, recovered)
            }
            Event::AgentStarted { conn, keys } => self.agent_started(conn, keys),
            Event::AgentReattach { conn, seqs } => self.agent_reattached(conn, seqs),
            Event::AgentWorkers { conn, workers } => self.agent_workers(conn, workers),
            Event::AgentOutput { conn, output } => self.agent_output(conn, output),
            Event::AgentHeard { conn } => {
                if let Some(agent) = self.agents.get_mut(&conn) {
                    agent.last_heard = Instant::now();
                }
            }
            Event::AgentLeaving { conn, reason } => self.agent_leaving(conn, reason),
            Event::AgentLeft { conn, reason } => self.agent_left(conn, &reason),
            Event::DriverJoined { conn, name, session, attach, tx } => {
                self.driver_joined(conn, name, session, attach, tx)
            }
            // A driver is known by its session's first connection; events of a connection its
            // session has moved away from are dropped.
            Event::Submit { conn, kinds, tasks } => {
                if let Some(&driver) = self.connections.get(&conn) {
                    self.submit(driver, kinds, tasks)
                }
            }
            Event::Cancel { conn, ids } => {
                if let Some(&driver) = self.connections.get(&conn) {
                    self.cancel(driver, Some(ids));
                }
            }
            Event::Share { conn, piece } => {
                if let Some(&driver) = self.connections.get(&conn) {
                    self.share_piece(driver, piece);
                }
            }
            Event::Unshare { conn, ids } => {
                if let Some(&driver) = self.connections.get(&conn) {
                    self.unshare(driver, ids);
                }
            }
            Event::Observe { request, reply } => self.on_observe(request, reply),
            Event::Ack { conn, ids } => {
                if let Some(&driver) = self.connections.get(&conn) {
                    self.cache.ack(driver, &ids);
                    if let Some(session) = self.durable_session(driver) {
                        for id in ids {
                            self.record(Change::ResultAcked {
                                session: session.clone(),
                                id: id.get(),
                            });
                        }
                    }
                }
            }
            Event::DriverLeft { conn, bye } => {
                if let Some(driver) = self.connections.remove(&conn) {
                    self.driver_left(driver, bye)
                }
            }
            Event::Committed { batch } => {
                self.committed(batch);
                self.cancels_saved(batch);
            }
            Event::SaveFailed { error } => self.save_failed(error),
            Event::Demand { shape, reply } => {
                let demand = self.demand(&shape);
                let _ = reply.send(demand);
            }
            Event::Autoscaled(status) => self.autoscale = Some(status),
        }
    }

    /// What every turn ends with, once its events are handled: work assigned, every
    /// connection's batch sent, and what is no longer needed dropped.
    fn end_turn(&mut self) {
        self.dispatch();
        self.save();
        self.flush();
        self.cache.trim();
        self.forget_departed();
        self.fold_rates();
    }

    /// Sends the dashboard a new snapshot.
    fn publish_status(&mut self) {
        if let Some(tx) = &self.publish {
            let snapshot = Arc::new(Snapshot::new(self.status()));
            tx.send_replace(snapshot);
        }
    }

    /// Drops cached results older than the age cap.
    fn expire_results(&mut self) {
        let evicted = self.cache.expire();
        if evicted > 0 {
            info!(evicted, ttl = ?self.config.result_ttl, "evicted results nobody fetched (age cap)");
        }
    }

    /// Tells every peer the server is stopping and lets their writers flush and close.
    fn shut_down(&mut self) {
        let reason = "the server is shutting down".to_string();
        info!(
            drivers = self.drivers.len(),
            agents = self.agents.len(),
            unfinished = self.tasks.len(),
            unfetched_results = self.cache.len(),
            "shutting down"
        );
        // Every result goes, those that would have waited for company too.
        self.later_due = Some(Instant::now());
        self.flush();
        // With a data directory the drivers' sessions outlive this run: they are not told to
        // give up, and reconnect when the server is back.
        for d in self.drivers.values().filter(|_| self.durable.is_none()) {
            if let Some(tx) = &d.tx {
                let _ = tx.send(ToDriver::ShuttingDown { reason: reason.clone() });
            }
        }
        for a in self.agents.values() {
            let _ = a.tx.send(ToAgent::ShuttingDown { reason: reason.clone() });
        }
        // Dropping the senders lets each writer flush and close its connection.
        self.drivers.clear();
        self.agents.clear();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_graph;
#[cfg(test)]
mod tests_leaving;
#[cfg(test)]
mod tests_priority;
#[cfg(test)]
mod tests_resources;
#[cfg(test)]
mod tests_restart;
#[cfg(test)]
mod tests_results;
#[cfg(test)]
mod tests_sessions;
#[cfg(test)]
mod tests_shares;
