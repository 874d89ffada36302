//! The server's single owner: the queue, the agents, the drivers and the results.
//!
//! Connection tasks turn frames into [`Event`]s; [`Core::run`] handles them one at a time, so
//! no state is shared and nothing is locked. Each turn handles every event already waiting, then
//! assigns work and sends each connection one batch.
//!
//! Scheduling is push-based: an agent has credit for its workers plus as many again, and, once
//! its tasks have shown how long they take, for about [`WORK_WINDOW`] of expected work per
//! worker (up to [`MAX_CREDIT`]), so tiny tasks stream across the network without gaps while
//! long ones never pile up behind one agent as another idles. Within a driver, tasks run in submission order;
//! between drivers, assignments go round-robin. A task goes only to an agent whose binary has
//! the task's name *and* signature; a task no connected agent can run waits, and its driver is
//! told why.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use blitzen_protocol::cluster::{
    AgentResult, Assignment, Submission, TaskKind, TaskReport, ToAgent, ToDriver,
};
use blitzen_protocol::{Captured, Outcome};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ServerConfig;

mod cache;
mod tasks;

use cache::ResultCache;
use tasks::{TaskKey, TaskTable};

/// Identifies one accepted connection for the life of the server.
pub(crate) type ConnId = u64;

/// What connection tasks report to the core.
#[derive(Debug)]
pub(crate) enum Event {
    AgentJoined {
        conn: ConnId,
        host: String,
        workers: u32,
        kinds: Vec<TaskKind>,
        tx: mpsc::UnboundedSender<ToAgent>,
        /// Cancelled to close the connection.
        close: CancellationToken,
    },
    AgentDone {
        conn: ConnId,
        results: Vec<AgentResult>,
        /// Results of tasks assigned on an earlier connection of the agent.
        recovered: bool,
    },
    /// Tasks with a timeout started on the agent's workers.
    AgentStarted {
        conn: ConnId,
        keys: Vec<TaskKey>,
    },
    AgentLeft {
        conn: ConnId,
        reason: String,
    },
    DriverJoined {
        conn: ConnId,
        name: String,
        tx: mpsc::UnboundedSender<ToDriver>,
    },
    Submit {
        conn: ConnId,
        /// Kinds new to this connection, appended to its table.
        kinds: Vec<TaskKind>,
        tasks: Vec<Submission>,
    },
    Ack {
        conn: ConnId,
        ids: Vec<u64>,
    },
    DriverLeft {
        conn: ConnId,
        /// The driver said goodbye: forget everything it had.
        bye: bool,
    },
}

/// Interned [`TaskKind`]: an index into `Core::kinds`.
type KindId = usize;

/// Expected work per worker an agent may hold beyond its first two tasks per worker.
const WORK_WINDOW: Duration = Duration::from_millis(5);

/// Most tasks an agent may hold at once.
const MAX_CREDIT: usize = 1024;

#[derive(Debug)]
pub(crate) struct Task {
    driver: ConnId,
    /// The driver's id of the task.
    id: u64,
    /// Submission order across the server (keys are reused, so they do not tell it).
    seq: u64,
    kind: KindId,
    args: Bytes,
    timeout_ms: Option<u64>,
    /// Reruns the agent may make when it crashes its worker or times out.
    retries: u32,
    /// The agent running it, if any.
    agent: Option<ConnId>,
    attempts: u32,
}

#[derive(Debug)]
struct Driver {
    name: String,
    /// `None` once the driver disconnected without a goodbye: results wait in the cache.
    tx: Option<mpsc::UnboundedSender<ToDriver>>,
    /// The kinds this connection declared, in order: a submission's `kind` indexes this.
    kinds: Vec<KindId>,
    /// Tasks taken from this connection so far, and whether it was told the latest count.
    accepted: u64,
    accepted_told: bool,
    /// Queued tasks per kind, each in submission order (keys grow with submission).
    queues: HashMap<KindId, VecDeque<TaskKey>>,
    /// Reports to send at the end of this turn.
    outbox: Vec<TaskReport>,
    /// Kinds this driver was told no agent can run, so it is told once.
    told_waiting: HashSet<KindId>,
    /// Its tasks still held (queued or running): a departed driver is forgotten once this is
    /// zero and the cache holds nothing for it.
    live: usize,
}

#[derive(Debug)]
struct Agent {
    host: String,
    /// The kinds it can run, each with its index in the agent's own announcement.
    kinds: HashMap<KindId, u32>,
    workers: usize,
    /// Running average of its tasks' run times (µs), once some have finished.
    average_us: Option<f64>,
    running: HashSet<TaskKey>,
    tx: mpsc::UnboundedSender<ToAgent>,
    close: CancellationToken,
    /// Assignments to send at the end of this turn.
    outbox: Vec<Assignment>,
}

pub(crate) struct Core {
    config: ServerConfig,
    events: mpsc::UnboundedReceiver<Event>,
    kinds: Vec<TaskKind>,
    kind_ids: HashMap<(String, u64), KindId>,
    tasks: TaskTable,
    /// The next task's [`Task::seq`].
    next_seq: u64,
    drivers: HashMap<ConnId, Driver>,
    /// Drivers in round-robin order (the front one is served next).
    rotation: VecDeque<ConnId>,
    agents: HashMap<ConnId, Agent>,
    /// Results not yet acknowledged, within the caps on age and number.
    cache: ResultCache,
    /// When started tasks with a timeout are settled if their agent has not answered; stale
    /// entries (the task ended, or moved) are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, TaskKey, ConnId)>>,
}

impl Core {
    pub(crate) fn new(config: ServerConfig, events: mpsc::UnboundedReceiver<Event>) -> Self {
        Self {
            cache: ResultCache::new(config.result_ttl, config.max_results),
            config,
            events,
            kinds: Vec::new(),
            kind_ids: HashMap::new(),
            tasks: TaskTable::default(),
            next_seq: 0,
            drivers: HashMap::new(),
            rotation: VecDeque::new(),
            agents: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// Serves until `shutdown` is cancelled, then tells every peer and returns.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let expiry = self.cache.next_expiry();
            let deadline = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = sleep_until(expiry), if expiry.is_some() => self.expire_results(),
                _ = sleep_until(deadline), if deadline.is_some() => self.settle_overdue(),
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
            }
            self.dispatch();
            self.flush();
            self.cache.trim();
            self.forget_departed();
        }
        self.shut_down();
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::AgentJoined { conn, host, workers, kinds, tx, close } => {
                self.agent_joined(conn, host, workers, kinds, tx, close)
            }
            Event::AgentDone { conn, results, recovered } => {
                self.agent_done(conn, results, recovered)
            }
            Event::AgentStarted { conn, keys } => self.agent_started(conn, keys),
            Event::AgentLeft { conn, reason } => self.agent_left(conn, &reason),
            Event::DriverJoined { conn, name, tx } => {
                info!(conn, %name, "driver connected");
                self.drivers.insert(
                    conn,
                    Driver {
                        name,
                        tx: Some(tx),
                        kinds: Vec::new(),
                        accepted: 0,
                        accepted_told: true,
                        queues: HashMap::new(),
                        outbox: Vec::new(),
                        told_waiting: HashSet::new(),
                        live: 0,
                    },
                );
                self.rotation.push_back(conn);
            }
            Event::Submit { conn, kinds, tasks } => self.submit(conn, kinds, tasks),
            Event::Ack { conn, ids } => self.cache.ack(conn, &ids),
            Event::DriverLeft { conn, bye } => self.driver_left(conn, bye),
        }
    }

    // ----- drivers -----

    fn submit(&mut self, conn: ConnId, kinds: Vec<TaskKind>, submissions: Vec<Submission>) {
        let new_kinds: Vec<KindId> = kinds.into_iter().map(|k| self.intern(k)).collect();
        let Some(driver) = self.drivers.get_mut(&conn) else { return };
        driver.kinds.extend(new_kinds);
        driver.accepted += submissions.len() as u64;
        driver.accepted_told = false;
        let name = driver.name.clone();
        let declared = driver.kinds.clone();
        let mut unrunnable: HashMap<KindId, Vec<u64>> = HashMap::new();
        let mut refused = Vec::new();
        let mut undeclared = Vec::new();
        let count = submissions.len();
        for s in submissions {
            let Some(&kind) = declared.get(s.kind as usize) else {
                undeclared.push(s.id);
                continue;
            };
            if self.tasks.len() >= self.config.task_limit {
                refused.push(s.id);
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let timeout_ms =
                s.timeout_ms.or(self.config.default_timeout.map(|t| t.as_millis() as u64));
            let key = self.tasks.insert(Task {
                driver: conn,
                id: s.id,
                seq,
                kind,
                args: s.args,
                timeout_ms,
                retries: s.retries,
                agent: None,
                attempts: 0,
            });
            if let Some(d) = self.drivers.get_mut(&conn) {
                d.queues.entry(kind).or_default().push_back(key);
                d.live += 1;
                if !d.told_waiting.contains(&kind)
                    && !self.agents.values().any(|a| a.kinds.contains_key(&kind))
                {
                    unrunnable.entry(kind).or_default().push(s.id);
                }
            }
        }
        debug!(conn, driver = %name, count, refused = refused.len(), "tasks submitted");
        if !undeclared.is_empty() {
            warn!(conn, driver = %name, tasks = undeclared.len(), "submissions name a kind the driver never declared; refused");
            for id in undeclared {
                let reason = "the driver submitted it with a kind of task it never declared \
                              (a bug in the driver)"
                    .to_string();
                self.report(conn, unstarted(id, Outcome::Refused { reason }));
            }
        }
        if !refused.is_empty() {
            warn!(conn, driver = %name, refused = refused.len(), limit = self.config.task_limit, "task limit reached; submissions refused");
            let reason = format!(
                "the server already holds its limit of {} tasks (--task-limit); submit again \
                 once earlier tasks have finished",
                self.config.task_limit
            );
            for id in refused {
                let outcome = Outcome::Refused { reason: reason.clone() };
                self.report(conn, unstarted(id, outcome));
            }
        }
        for (kind, ids) in unrunnable {
            let reason = self.why_unrunnable(kind);
            warn!(conn, driver = %name, tasks = ids.len(), %reason, "tasks wait for an agent");
            if let Some(d) = self.drivers.get_mut(&conn) {
                d.told_waiting.insert(kind);
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Waiting { ids, reason });
                }
            }
        }
    }

    fn why_unrunnable(&self, kind: KindId) -> String {
        let wanted = &self.kinds[kind];
        let others: Vec<&str> = self
            .agents
            .values()
            .flat_map(|a| a.kinds.keys())
            .map(|&k| &self.kinds[k])
            .filter(|k| k.name == wanted.name)
            .map(|k| k.signature.as_str())
            .collect();
        if self.agents.is_empty() {
            format!("no agent is connected to run `{}`; the tasks wait for one", wanted.name)
        } else if others.is_empty() {
            format!(
                "no connected agent has a task named `{}`; the tasks wait for an agent built \
                 with it",
                wanted.name
            )
        } else {
            format!(
                "connected agents have `{}` with another signature ({}), not `{}`; the tasks \
                 wait for an agent built from the same definitions",
                wanted.name,
                others.join(", "),
                wanted.signature
            )
        }
    }

    fn driver_left(&mut self, conn: ConnId, bye: bool) {
        let Some(driver) = self.drivers.get_mut(&conn) else { return };
        driver.tx = None;
        if !bye {
            info!(conn, driver = %driver.name, "driver disconnected; its tasks go on and results are kept");
            return;
        }
        info!(conn, driver = %driver.name, "driver finished");
        let Some(driver) = self.drivers.remove(&conn) else { return };
        self.rotation.retain(|&c| c != conn);
        self.cache.forget(conn);
        for key in driver.queues.into_values().flatten() {
            self.tasks.remove(key);
        }
        // Tasks running for it are left to finish; their results are dropped on arrival.
        self.tasks.retain(|t| t.driver != conn || t.agent.is_some());
    }

    /// Removes a task that has ended from the books.
    fn take_task(&mut self, key: TaskKey) -> Option<Task> {
        let task = self.tasks.remove(key)?;
        if let Some(d) = self.drivers.get_mut(&task.driver) {
            d.live = d.live.saturating_sub(1);
        }
        Some(task)
    }

    /// Forgets drivers that left without a goodbye once nothing is held for them any more.
    fn forget_departed(&mut self) {
        let done: Vec<ConnId> = self
            .drivers
            .iter()
            .filter(|(conn, d)| d.tx.is_none() && d.live == 0 && !self.cache.holds(**conn))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in done {
            if let Some(d) = self.drivers.remove(&conn) {
                debug!(conn, driver = %d.name, "departed driver forgotten: nothing left for it");
            }
            self.rotation.retain(|&c| c != conn);
        }
    }

    /// Queues a result for its driver (sent at the end of the turn, kept until acknowledged).
    fn report(&mut self, conn: ConnId, report: TaskReport) {
        let Some(d) = self.drivers.get_mut(&conn) else { return };
        if d.tx.is_some() {
            d.outbox.push(report.clone());
        }
        let evicted = self.cache.insert(conn, report);
        if evicted > 0 {
            info!(
                evicted,
                cap = self.config.max_results,
                "evicted results nobody fetched (count cap)"
            );
        }
    }

    // ----- agents -----

    fn agent_joined(
        &mut self,
        conn: ConnId,
        host: String,
        workers: u32,
        kinds: Vec<TaskKind>,
        tx: mpsc::UnboundedSender<ToAgent>,
        close: CancellationToken,
    ) {
        let kinds: HashMap<KindId, u32> =
            kinds.into_iter().enumerate().map(|(i, k)| (self.intern(k), i as u32)).collect();
        let workers = (workers as usize).max(1);
        info!(conn, %host, workers, tasks = kinds.len(), "agent connected");
        // Drivers told that no agent could run some of their tasks may hear again.
        for d in self.drivers.values_mut() {
            d.told_waiting.retain(|k| !kinds.contains_key(k));
        }
        self.agents.insert(
            conn,
            Agent {
                host,
                kinds,
                workers,
                average_us: None,
                running: HashSet::new(),
                tx,
                close,
                outbox: Vec::new(),
            },
        );
    }

    /// Results from an agent. Each task's first result is kept; a later one (the task ran
    /// twice because its first agent vanished and came back) is dropped and logged. A result on
    /// this connection for a task the agent does not hold, or a recovered one for a task no agent
    /// ever lost, breaks the protocol: the connection is closed and the rest of the batch
    /// ignored.
    fn agent_done(&mut self, conn: ConnId, results: Vec<AgentResult>, recovered: bool) {
        let Some(host) = self.agents.get(&conn).map(|a| a.host.clone()) else { return };
        let mut duplicates = 0;
        for r in results {
            if !recovered {
                let Some(agent) = self.agents.get_mut(&conn) else { return };
                if !agent.running.remove(&r.key) {
                    warn!(conn, %host, key = r.key, "agent sent a result for a task it does not hold; connection closed");
                    agent.close.cancel();
                    break;
                }
                let us = r.elapsed_us as f64;
                agent.average_us = Some(agent.average_us.map_or(us, |avg| 0.9 * avg + 0.1 * us));
            } else if self.tasks.get(r.key).is_some_and(|t| t.attempts == 0) {
                // Only a task some agent lost can come back late; this one never was.
                warn!(conn, %host, key = r.key, "agent recovered a result for a task no agent lost; connection closed");
                if let Some(agent) = self.agents.get(&conn) {
                    agent.close.cancel();
                }
                break;
            }
            let Some(task) = self.tasks.remove(r.key) else {
                duplicates += 1;
                continue;
            };
            if let Some(d) = self.drivers.get_mut(&task.driver) {
                d.live = d.live.saturating_sub(1);
            }
            debug!(task = task.id, driver = task.driver, agent = conn, recovered, "task finished");
            let report = TaskReport {
                id: task.id,
                outcome: r.outcome,
                stdout: r.stdout,
                stderr: r.stderr,
                worker: r.worker_pid.map(|pid| (pid, host.clone())),
                elapsed_us: r.elapsed_us,
            };
            self.report(task.driver, report);
        }
        if duplicates > 0 {
            info!(conn, %host, duplicates, recovered, "results for tasks that had already ended (they ran twice); dropped");
        }
    }

    /// Holds started tasks to their timeout plus the grace period.
    fn agent_started(&mut self, conn: ConnId, keys: Vec<TaskKey>) {
        let Some(agent) = self.agents.get(&conn) else { return };
        debug!(conn, count = keys.len(), "tasks with a timeout started");
        let now = Instant::now();
        for key in keys {
            if !agent.running.contains(&key) {
                continue;
            }
            let Some(timeout) = self.tasks.get(key).and_then(|t| t.timeout_ms) else { continue };
            let at = now + Duration::from_millis(timeout) + self.config.deadline_grace;
            self.deadlines.push(Reverse((at, key, conn)));
        }
    }

    /// Settles started tasks whose agent has not answered by their deadline.
    fn settle_overdue(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key, conn))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let still_there = self.tasks.get(key).is_some_and(|t| t.agent == Some(conn));
            let Some(agent) = self.agents.get(&conn) else { continue };
            if !still_there || !agent.running.contains(&key) {
                continue;
            }
            let host = agent.host.clone();
            let Some(task) = self.take_task(key) else { continue };
            let timeout = Duration::from_millis(task.timeout_ms.unwrap_or_default());
            let grace = self.config.deadline_grace;
            warn!(conn, %host, task = task.id, ?timeout, ?grace, "no answer by the task's deadline; settled by the server");
            let reason = format!(
                "its agent {host} did not answer within the task's timeout ({timeout:?}) plus a \
                 grace of {grace:?}; settled by the server"
            );
            self.report(task.driver, unstarted(task.id, Outcome::Lost { reason }));
        }
    }

    fn agent_left(&mut self, conn: ConnId, reason: &str) {
        let Some(agent) = self.agents.remove(&conn) else { return };
        warn!(conn, host = %agent.host, running = agent.running.len(), %reason, "agent disconnected");
        let mut lost = Vec::new();
        for key in agent.running {
            let Some(task) = self.tasks.get_mut(key) else { continue };
            task.agent = None;
            task.attempts += 1;
            if task.attempts >= self.config.max_attempts {
                lost.push(key);
                continue;
            }
            let (driver, kind, seq) = (task.driver, task.kind, task.seq);
            if let Some(d) = self.drivers.get_mut(&driver) {
                // Back where it was in its queue: before what was submitted after it.
                let queue = d.queues.entry(kind).or_default();
                let tasks = &self.tasks;
                let at = queue.partition_point(|&k| tasks.get(k).is_some_and(|t| t.seq < seq));
                queue.insert(at, key);
            }
        }
        for key in lost {
            if let Some(task) = self.take_task(key) {
                let reason = format!(
                    "its agent disconnected {} times while holding it; giving up",
                    task.attempts
                );
                self.report(task.driver, unstarted(task.id, Outcome::Lost { reason }));
            }
        }
    }

    // ----- scheduling -----

    /// Fills every agent's free credit, round-robin between drivers.
    fn dispatch(&mut self) {
        let agent_ids: Vec<ConnId> = self.agents.keys().copied().collect();
        for conn in agent_ids {
            // `running` includes the tasks still in the outbox.
            while let Some(agent) = self.agents.get(&conn) {
                if agent.running.len() >= agent.capacity() {
                    break;
                }
                let Some(key) = self.next_task_for(conn) else { break };
                let Some(task) = self.tasks.get_mut(key) else { continue };
                let Some(agent) = self.agents.get_mut(&conn) else { break };
                // `next_task_for` only picks kinds the agent has.
                let Some(&kind) = agent.kinds.get(&task.kind) else { continue };
                task.agent = Some(conn);
                let assignment = Assignment {
                    key,
                    kind,
                    args: task.args.clone(),
                    timeout_ms: task.timeout_ms,
                    retries: task.retries,
                };
                {
                    agent.running.insert(key);
                    agent.outbox.push(assignment);
                }
            }
        }
    }

    /// The oldest queued task of the next driver (in rotation) that this agent can run.
    fn next_task_for(&mut self, agent: ConnId) -> Option<TaskKey> {
        let kinds = &self.agents.get(&agent)?.kinds;
        let tasks = &self.tasks;
        for _ in 0..self.rotation.len() {
            let conn = self.rotation.pop_front()?;
            self.rotation.push_back(conn);
            let Some(d) = self.drivers.get_mut(&conn) else { continue };
            // Tasks that ended while queued (a late result settled them) leave dead keys.
            for q in d.queues.values_mut() {
                while q.front().is_some_and(|&k| tasks.get(k).is_none()) {
                    q.pop_front();
                }
            }
            // The oldest task among the kinds this agent can run.
            let best = d
                .queues
                .iter()
                .filter(|(k, _)| kinds.contains_key(k))
                .filter_map(|(&k, q)| Some((k, tasks.get(*q.front()?)?.seq)))
                .min_by_key(|&(_, seq)| seq)
                .map(|(k, _)| k);
            if let Some(kind) = best {
                return d.queues.get_mut(&kind).and_then(VecDeque::pop_front);
            }
        }
        None
    }

    /// Sends every connection its batch of this turn.
    fn flush(&mut self) {
        for agent in self.agents.values_mut() {
            if !agent.outbox.is_empty() {
                let _ = agent.tx.send(ToAgent::Run(std::mem::take(&mut agent.outbox)));
            }
        }
        for d in self.drivers.values_mut() {
            if !d.outbox.is_empty() {
                let batch = std::mem::take(&mut d.outbox);
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Results(batch));
                }
            }
            // After the results: a driver that hears its tasks were taken already holds the
            // answers of those that were refused.
            if !d.accepted_told {
                d.accepted_told = true;
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Accepted { count: d.accepted });
                }
            }
        }
    }

    // ----- the result cache -----

    /// Drops cached results older than the age cap.
    fn expire_results(&mut self) {
        let evicted = self.cache.expire();
        if evicted > 0 {
            info!(evicted, ttl = ?self.config.result_ttl, "evicted results nobody fetched (age cap)");
        }
    }

    // ----- the end -----

    fn shut_down(&mut self) {
        let reason = "the server is shutting down".to_string();
        info!(
            drivers = self.drivers.len(),
            agents = self.agents.len(),
            unfinished = self.tasks.len(),
            unfetched_results = self.cache.len(),
            "shutting down"
        );
        self.flush();
        for d in self.drivers.values() {
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

    fn intern(&mut self, kind: TaskKind) -> KindId {
        let key = (kind.name.clone(), kind.fingerprint);
        if let Some(&id) = self.kind_ids.get(&key) {
            return id;
        }
        self.kinds.push(kind);
        self.kind_ids.insert(key, self.kinds.len() - 1);
        self.kinds.len() - 1
    }
}

impl Agent {
    /// Tasks it may hold at once.
    fn capacity(&self) -> usize {
        let base = 2 * self.workers;
        let extra = match self.average_us {
            Some(avg) => {
                let window = (self.workers as f64) * WORK_WINDOW.as_micros() as f64;
                (window / avg.max(1.0)) as usize
            }
            None => 0,
        };
        (base + extra).min(MAX_CREDIT.max(base))
    }
}

fn unstarted(id: u64, outcome: Outcome) -> TaskReport {
    TaskReport {
        id,
        outcome,
        stdout: Captured::default(),
        stderr: Captured::default(),
        worker: None,
        elapsed_us: 0,
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
