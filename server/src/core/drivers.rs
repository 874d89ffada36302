//! Drivers: joining and leaving, their submissions, and results on their way back to them.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use blitzen_protocol::Report;
use blitzen_protocol::cluster::ToDriver;
use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use blitzen_protocol::output::TaskOutput;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::counters::SessionStats;
use super::output::OutputBudget;
use super::tasks::{DriverKey, Task};
use super::{Core, KindId};
use crate::store::Change;

/// How long the result of a task that others waited on may wait for company on its way to
/// its driver.
pub(super) const INPUT_RESULTS_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// A driver the server knows: connected, or departed without a goodbye while tasks or
/// results are still held for it.
#[derive(Debug)]
pub(super) struct Driver {
    /// Its name, for logs (program and pid).
    pub name: String,
    /// Its session (empty: none, it cannot reconnect).
    pub session: String,
    /// Its current connection, or the last one (0, which no connection is given, for a session
    /// restored from the data directory and not taken over yet).
    pub conn: ConnId,
    /// When its connection ended without a goodbye, while it has none.
    pub departed: Option<Instant>,
    /// Above every task id it submitted, for a process that attaches to its session.
    pub next_id: u64,
    /// Its connection's writer; `None` once it disconnected without a goodbye, while its
    /// results wait in the cache.
    pub tx: Option<mpsc::UnboundedSender<ToDriver>>,
    /// The kinds this connection declared, in order: a submission's `kind` indexes this.
    pub kinds: Vec<KindId>,
    /// Tasks taken from this session so far (queued, or refused with a report).
    pub accepted: u64,
    /// Of those, how many are saved in the data directory (all of them without one): what the
    /// driver is told.
    pub durable_accepted: u64,
    /// `accepted` as it was at the end of each batch not committed yet: `(batch, count)`.
    pub accepted_at: VecDeque<(u64, u64)>,
    /// Whether the driver was told the latest `accepted` count.
    pub accepted_told: bool,
    /// Queued tasks per kind, each in submission order. May hold keys of tasks that ended
    /// while queued (a late result settled them); they are skipped and dropped at the front.
    pub queues: HashMap<KindId, VecDeque<TaskKey>>,
    /// Since when each queue has waited — since it last gave an agent a task, or since it was
    /// first seen holding one — for the priorities' aging; kept only while this driver has
    /// tasks of more than one priority queued.
    pub waiting_since: HashMap<KindId, Instant>,
    /// Reports to send at the end of this turn.
    pub outbox: Vec<Report<DriverTaskId>>,
    /// Results of tasks that others waited on, sent with the next reports or at
    /// `Core::later_due`, whichever comes first: a chain of tasks wakes its driver once every
    /// few links rather than at each.
    pub later: Vec<Report<DriverTaskId>>,
    /// Lines its streamed tasks printed, to send at the end of this turn before the reports.
    pub output: Vec<TaskOutput>,
    /// What it may still be sent of such lines.
    pub output_budget: OutputBudget,
    /// Its tasks still held (queued or running): a departed driver is forgotten once this is
    /// zero and the cache holds nothing for it.
    pub live: usize,
    /// What is counted of its tasks for observers.
    pub stats: SessionStats,
}

impl Driver {
    /// A driver with nothing yet, not connected.
    pub(super) fn departed(name: String, session: String, conn: ConnId, at: Instant) -> Self {
        Self {
            name,
            session,
            conn,
            departed: Some(at),
            next_id: 0,
            tx: None,
            kinds: Vec::new(),
            accepted: 0,
            durable_accepted: 0,
            accepted_at: VecDeque::new(),
            accepted_told: true,
            queues: HashMap::new(),
            waiting_since: HashMap::new(),
            outbox: Vec::new(),
            later: Vec::new(),
            output: Vec::new(),
            output_budget: OutputBudget::new(at),
            live: 0,
            stats: SessionStats::new(at),
        }
    }
}

impl Core {
    /// A key for a new driver.
    pub(super) fn new_driver_key(&mut self) -> DriverKey {
        let key = DriverKey::new(self.next_driver);
        self.next_driver += 1;
        key
    }

    /// A driver connected: a new session, or one the server knows, which this connection takes
    /// over — the driver hears how many of its tasks the server holds, and gets every result it
    /// is owed again.
    pub(super) fn driver_joined(
        &mut self,
        conn: ConnId,
        name: String,
        session: String,
        attach: bool,
        tx: mpsc::UnboundedSender<ToDriver>,
    ) {
        if let Some(&key) = self.sessions.get(&session)
            && self.drivers.contains_key(&key)
        {
            let owed = self.cache.held(key);
            let held: Vec<DriverTaskId> = if attach {
                let live = self.tasks.iter().filter(|t| t.driver == key).map(|t| t.id);
                live.chain(owed.iter().map(|r| r.id)).collect()
            } else {
                Vec::new()
            };
            let Some(driver) = self.drivers.get_mut(&key) else { return };
            // The previous connection may not have been noticed gone yet: it is dropped.
            self.connections.remove(&driver.conn);
            let how = if attach {
                "driver attached to the session"
            } else {
                "driver reconnected to its session"
            };
            info!(%conn, %name, %session, held = driver.live, owed = owed.len(), "{how}");
            let _ = tx.send(ToDriver::Session {
                resumed: true,
                accepted: driver.accepted,
                held,
                next_id: driver.next_id,
                shares: self.shares.of(key),
            });
            driver.name = name;
            driver.conn = conn;
            driver.departed = None;
            driver.tx = Some(tx);
            // Kinds are declared per connection: the new one declares its own.
            driver.kinds.clear();
            driver.accepted_told = true;
            driver.outbox = owed;
            driver.later.clear();
            self.connections.insert(conn, key);
            return;
        }
        if attach {
            // Nothing to attach to: the driver reports it and leaves.
            info!(%conn, %name, %session, "a driver asked to attach to a session the server does not know");
            let _ = tx.send(ToDriver::Session {
                resumed: false,
                accepted: 0,
                held: Vec::new(),
                next_id: 0,
                shares: Vec::new(),
            });
            return;
        }
        info!(%conn, %name, "driver connected");
        let _ = tx.send(ToDriver::Session {
            resumed: false,
            accepted: 0,
            held: Vec::new(),
            next_id: 0,
            shares: Vec::new(),
        });
        let key = self.new_driver_key();
        let mut driver = Driver::departed(name, session.clone(), conn, Instant::now());
        driver.tx = Some(tx);
        driver.departed = None;
        if !session.is_empty() {
            self.sessions.insert(session, key);
        }
        self.connections.insert(conn, key);
        self.drivers.insert(key, driver);
        self.rotation.push_back(key);
    }

    /// A driver's connection ended. After a goodbye it is forgotten with its queued tasks and
    /// results; without one its tasks go on and their results wait in the cache.
    pub(super) fn driver_left(&mut self, driver_key: DriverKey, bye: bool) {
        let Some(driver) = self.drivers.get_mut(&driver_key) else { return };
        driver.tx = None;
        driver.departed = Some(Instant::now());
        if !bye {
            info!(%driver_key, driver = %driver.name, "driver disconnected; its tasks go on and results are kept");
            return;
        }
        info!(%driver_key, driver = %driver.name, "driver finished");
        if let Some(session) = self.durable_session(driver_key) {
            self.record(Change::SessionEnded { session });
        }
        let Some(driver) = self.drivers.remove(&driver_key) else { return };
        self.sessions.remove(&driver.session);
        self.rotation.retain(|&c| c != driver_key);
        self.cache.forget(driver_key);
        for key in driver.queues.into_values().flatten() {
            self.tasks.remove(key);
        }
        // Tasks running for it are left to finish; their results are dropped on arrival.
        self.tasks.retain(|t| t.driver != driver_key || t.agent.get().is_some());
        let tasks = &self.tasks;
        self.graph.retain(|key| tasks.get(key).is_some());
        self.graph.forget_driver(driver_key);
        self.shares.retain_tasks(|key| tasks.get(key).is_some());
        self.forget_shares(driver_key);
    }

    /// Removes a task that has ended from the books.
    pub(super) fn take_task(&mut self, key: TaskKey) -> Option<Task> {
        let task = self.tasks.remove(key)?;
        self.graph.forget(key);
        self.shared_task_ended(key, task.agent.get());
        if !self.cancelling.is_empty() {
            self.cancelling.remove(&key);
        }
        self.unstreamed.forget(&key);
        if let Some(d) = self.drivers.get_mut(&task.driver) {
            d.live = d.live.saturating_sub(1);
        }
        if let Some(session) = self.durable_session(task.driver) {
            let attempted = task.attempts > 0;
            self.record(Change::TaskEnded { session, id: task.id.get(), attempted });
        }
        Some(task)
    }

    /// Forgets drivers that left without a goodbye once nothing is held for them any more.
    /// A session with nothing held for it is still kept `session_ttl` after its connection
    /// ended, for its driver to reconnect to (its tasks and results are kept as long as they
    /// last).
    pub(super) fn forget_departed(&mut self) {
        let ttl = self.config.session_ttl;
        let done: Vec<DriverKey> = self
            .drivers
            .iter()
            .filter(|(key, d)| {
                let kept = !d.session.is_empty() && d.departed.is_some_and(|at| at.elapsed() < ttl);
                d.tx.is_none() && d.live == 0 && !self.cache.holds(**key) && !kept
            })
            .map(|(&key, _)| key)
            .collect();
        for key in done {
            if let Some(session) = self.durable_session(key) {
                self.record(Change::SessionEnded { session });
            }
            self.forget_shares(key);
            if let Some(d) = self.drivers.remove(&key) {
                debug!(driver = %d.name, "departed driver forgotten: nothing left for it");
                self.sessions.remove(&d.session);
            }
            self.rotation.retain(|&k| k != key);
        }
    }

    /// Queues a result for its driver (sent at the end of the turn, kept until acknowledged);
    /// `kind` is the task's, when it got as far as being queued.
    pub(super) fn report(
        &mut self,
        driver_key: DriverKey,
        report: Report<DriverTaskId>,
        kind: Option<KindId>,
    ) {
        if self.graph.has_waiters() {
            // Tasks that wait on it get its value or fail, and those that wait on them…
            // (No allocation unless a task fails for want of an input.)
            let (mut first, mut next) = (Some((driver_key, report, kind)), Vec::new());
            while let Some((driver, report, kind)) = first.take().or_else(|| next.pop()) {
                let inputs = self.inputs_ended(driver, &report, kind, &mut next);
                self.record_result(driver, &report);
                self.deliver_when(driver, report, kind, inputs);
            }
            return;
        }
        self.record_result(driver_key, &report);
        self.deliver(driver_key, report, kind);
    }

    /// Saves a result with this turn's changes (with a data directory and a session).
    pub(super) fn record_result(&mut self, driver_key: DriverKey, report: &Report<DriverTaskId>) {
        if let Some(session) = self.durable_session(driver_key) {
            let (id, report) = (report.id.get(), Box::new(report.clone()));
            self.record(Change::Result { session, id, report });
        }
    }

    /// Counts a result and queues it for its driver, keeping it until acknowledged.
    pub(super) fn deliver(
        &mut self,
        driver_key: DriverKey,
        report: Report<DriverTaskId>,
        kind: Option<KindId>,
    ) {
        self.deliver_when(driver_key, report, kind, false);
    }

    /// [`deliver`](Self::deliver), or, for the result of a task that others waited on (`later`:
    /// they have it already), with the driver's next reports or within
    /// [`INPUT_RESULTS_DELAY`].
    fn deliver_when(
        &mut self,
        driver_key: DriverKey,
        report: Report<DriverTaskId>,
        kind: Option<KindId>,
        later: bool,
    ) {
        self.count_result(driver_key, &report, kind);
        let Some(d) = self.drivers.get_mut(&driver_key) else { return };
        if d.tx.is_some() && later {
            d.later.push(report.clone());
            self.later_due.get_or_insert_with(|| Instant::now() + INPUT_RESULTS_DELAY);
        } else if d.tx.is_some() {
            d.outbox.push(report.clone());
        }
        let evicted = self.cache.insert(driver_key, report);
        if evicted > 0 {
            info!(
                evicted,
                cap = self.config.max_results,
                "evicted results nobody fetched (count cap)"
            );
        }
    }
}
