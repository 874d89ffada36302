//! The core's side of the data directory: the state it starts from, and the changes of each turn
//! handed to the writer (see `crate::store`). A driver hears its tasks accepted, and an agent its
//! results received, once the batch that holds them is committed.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use blitzen_protocol::inputs::Inputs;
use blitzen_protocol::{Outcome, Report};
use tracing::{debug, error, info};

use super::drivers::Driver;
use super::tasks::{DriverKey, OptionalConn, Task};
use super::{Core, KindId};
use crate::store::{Change, Loaded, SessionRecord, TaskRecord};

impl Core {
    /// Starts from what the data directory held: each session as a driver that departed, its
    /// tasks in submission order, its results held for it. The tasks are held back from
    /// dispatch while the agents connected before the restart re-attach (see `reattach`), or
    /// queued at once when there were none (or `reattach_grace` is zero).
    pub(super) fn restore(&mut self, loaded: Loaded) {
        let now = Instant::now();
        // The kinds first, in the order of their numbers: each gets its number back as its id.
        if let Some(durable) = &mut self.durable {
            durable.kinds_saved = loaded.kinds.len() as u32;
        }
        let kinds: Vec<KindId> = loaded.kinds.into_iter().map(|k| self.intern(k)).collect();
        let mut keys: HashMap<String, DriverKey> = HashMap::new();
        for (session, record) in loaded.sessions {
            let key = self.new_driver_key();
            // Departed: no connection of it yet (`Driver::conn` is none the server gives out).
            let mut driver = Driver::departed(record.name, session.clone(), ConnId::new(0), now);
            driver.accepted = record.accepted;
            driver.durable_accepted = record.accepted;
            driver.next_id = record.next_id;
            self.drivers.insert(key, driver);
            self.rotation.push_back(key);
            self.sessions.insert(session.clone(), key);
            keys.insert(session, key);
        }
        self.next_seq = loaded.next_seq;
        for (session, id, record) in loaded.shares {
            if let Some(&driver) = keys.get(&session) {
                self.shares.restore(driver, id, record.key, record.bytes);
            }
        }
        // With no grace (the agents restart with the server, as in a `LocalCluster`), nobody is
        // waited for.
        let hold = !loaded.agents.is_empty() && !self.config.reattach_grace.is_zero();
        if !hold {
            for &(id, _) in &loaded.agents {
                self.record(Change::AgentGone { id });
            }
        }
        let mut held = HashMap::new();
        let mut queued_kinds = HashSet::new();
        let mut tasks = loaded.tasks;
        tasks.sort_by_key(|(_, _, record)| record.seq);
        let count = tasks.len();
        // Tasks that waited for others, held again once every task and result is back.
        let mut waiting = Vec::new();
        for (session, id, record) in tasks {
            let Some(&key) = keys.get(&session) else { continue };
            // The store checked that every task's kind is stored.
            let Some(&kind) = kinds.get(record.kind as usize) else { continue };
            self.next_seq = self.next_seq.max(record.seq + 1);
            let task_key = self.tasks.insert(Task {
                driver: key,
                id: DriverTaskId::new(id),
                seq: record.seq,
                kind,
                args: record.args,
                timeout_ms: record.timeout_ms.into(),
                retries: record.retries,
                unrunnable_limit_ms: record.unrunnable_limit_ms,
                agent: OptionalConn::NONE,
                attempts: record.attempts,
            });
            let mut inputs = record.inputs;
            if let Some(i) = &inputs
                && i.has_shared()
            {
                self.hold_shared(task_key, i.shared().collect());
            }
            if let Some(i) = inputs.take_if(|i| i.is_ready()) {
                self.shares.inputs.insert(task_key, i);
            }
            let Some(d) = self.drivers.get_mut(&key) else { continue };
            d.live += 1;
            if let Some(inputs) = inputs {
                waiting.push((key, task_key, inputs));
            } else if hold {
                held.insert(record.seq, task_key);
            } else {
                d.queues.entry(kind).or_default().push_back(task_key);
                queued_kinds.insert(kind);
            }
        }
        let results = loaded.results.len();
        for (session, report) in loaded.results {
            if let Some(&key) = keys.get(&session) {
                self.cache.insert(key, report);
            }
        }
        let inputs = waiting.len();
        self.restore_waiting(waiting);
        info!(
            sessions = keys.len(),
            tasks = count,
            waiting = inputs,
            results,
            "restored from the data directory"
        );
        if hold {
            self.hold_restored(held, loaded.agents, loaded.reattach_used_ms, now);
        } else {
            if loaded.reattach_used_ms.is_some() {
                self.record(Change::ReattachUsed { ms: None });
            }
            self.kinds_left(queued_kinds.into_iter().collect(), now);
        }
    }

    /// Restored tasks that waited for others wait again, on what they still waited on: a task
    /// restored too, or a result held (which meets the wait at once). One that waited on
    /// neither (which a saved graph never holds) ends `Lost` rather than wait for ever.
    fn restore_waiting(&mut self, waiting: Vec<(DriverKey, TaskKey, Box<Inputs>)>) {
        if waiting.is_empty() {
            return;
        }
        let held: HashSet<(DriverKey, DriverTaskId)> =
            self.tasks.iter().map(|t| (t.driver, t.id)).collect();
        for (driver, key, inputs) in waiting {
            let gone = inputs
                .waits()
                .map(|(on, _)| on)
                .find(|&on| !held.contains(&(driver, on)) && self.cache.get(driver, on).is_none());
            match gone {
                None => self.park(driver, key, *inputs),
                Some(on) => {
                    let reason = format!("task {on}, whose end it waited for, is no longer held");
                    if let Some(task) = self.take_task(key) {
                        let report = Report::unstarted(task.id, Outcome::Lost { reason });
                        self.report(driver, report, Some(task.kind));
                    }
                }
            }
        }
    }

    /// Records a change for the data directory, when there is one.
    pub(super) fn record(&mut self, change: Change) {
        if let Some(durable) = &mut self.durable {
            durable.changes.push(change);
        }
    }

    /// The session of a driver whose state is saved: with a data directory and a session.
    pub(super) fn durable_session(&self, driver: DriverKey) -> Option<String> {
        self.durable.as_ref()?;
        self.drivers.get(&driver).map(|d| d.session.clone()).filter(|s| !s.is_empty())
    }

    /// The batch that changes recorded now go into; 0 without a data directory.
    /// Below which `seq` tasks are on disk, and so may go to an agent (`None`: no data
    /// directory, every task may).
    pub(super) fn on_disk_below(&self) -> Option<u64> {
        self.durable.as_ref().map(|d| d.committed_seq)
    }

    pub(super) fn current_batch(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.next_batch)
    }

    /// The record of a task taken from a driver, with the driver's id of it.
    pub(super) fn task_record(&self, key: TaskKey) -> Option<(u64, TaskRecord)> {
        let task = self.tasks.get(key)?;
        let record = TaskRecord {
            kind: task.kind.0,
            args: task.args.clone(),
            timeout_ms: task.timeout_ms.get(),
            retries: task.retries,
            unrunnable_limit_ms: task.unrunnable_limit_ms,
            seq: task.seq,
            inputs: (self.graph.inputs(key).map(Box::new))
                .or_else(|| self.shares.inputs.get(&key).cloned()),
            attempts: 0,
        };
        Some((task.id.get(), record))
    }

    /// Records that a task's agent vanished while holding it.
    pub(super) fn record_attempts(&mut self, key: TaskKey) {
        let Some(task) = self.tasks.get(key) else { return };
        let (id, attempts) = (task.id.get(), task.attempts);
        if let Some(session) = self.durable_session(task.driver) {
            self.record(Change::Attempts { session, id, attempts });
        }
    }

    /// Records a session's counts.
    pub(super) fn record_session(&mut self, driver: DriverKey) {
        let Some(session) = self.durable_session(driver) else { return };
        let Some(d) = self.drivers.get(&driver) else { return };
        let record =
            SessionRecord { name: d.name.clone(), accepted: d.accepted, next_id: d.next_id };
        self.record(Change::Session { session, record });
    }

    /// A commit failed: until one succeeds, new tasks are refused (what was accepted waits in
    /// memory and in the writer, to be saved when space returns).
    pub(super) fn save_failed(&mut self, error: String) {
        if let Some(durable) = &mut self.durable {
            durable.failure = Some(error);
        }
    }

    /// Why new tasks cannot be taken now: the data directory does not take writes.
    pub(super) fn save_failure(&self) -> Option<&str> {
        self.durable.as_ref()?.failure.as_deref()
    }

    /// Results the caps evicted from the cache leave the data directory too.
    pub(super) fn record_evictions(&mut self) {
        let evicted = self.cache.take_evicted();
        if self.durable.is_none() {
            return;
        }
        for (driver, id) in evicted {
            if let Some(session) = self.durable_session(driver) {
                self.record(Change::ResultAcked { session, id: id.get() });
            }
        }
    }

    /// Hands the turn's changes to the writer as one batch.
    /// Also when there is nothing to save, if a driver's acceptance or an agent's acknowledgement
    /// waits for this batch: its commit is what releases them.
    pub(super) fn save(&mut self) {
        self.record_evictions();
        let Some(next) = self.durable.as_ref().map(|d| d.next_batch) else { return };
        let awaited = self
            .agents
            .values()
            .any(|a| a.unsaved.last().is_some_and(|&(b, _)| b == next))
            || self.drivers.values().any(|d| d.accepted_at.back().is_some_and(|&(b, _)| b == next));
        let Some(durable) = &mut self.durable else { return };
        if durable.changes.is_empty() && !awaited {
            return;
        }
        let batch = std::mem::take(&mut durable.changes);
        if durable.tx.send((durable.next_batch, batch)).is_err() {
            error!("the data directory's writer has stopped; changes are kept in memory only");
        }
        durable.seq_at.push_back((durable.next_batch, self.next_seq));
        durable.next_batch += 1;
    }

    /// Everything up to `batch` is on disk: the drivers hear their tasks accepted, the agents
    /// their results received.
    pub(super) fn committed(&mut self, batch: u64) {
        if let Some(durable) = &mut self.durable {
            durable.failure = None;
            while let Some(&(b, seq)) = durable.seq_at.front()
                && b <= batch
            {
                durable.committed_seq = durable.committed_seq.max(seq);
                durable.seq_at.pop_front();
            }
        }
        for d in self.drivers.values_mut() {
            while d.accepted_at.front().is_some_and(|&(b, _)| b <= batch) {
                if let Some((_, count)) = d.accepted_at.pop_front() {
                    d.durable_accepted = count;
                    d.accepted_told = false;
                }
            }
        }
        let now = Instant::now();
        for a in self.agents.values_mut() {
            let (saved, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut a.unsaved).into_iter().partition(|&(b, _)| b <= batch);
            a.unsaved = waiting;
            if !saved.is_empty() {
                debug!(host = %a.host, results = saved.len(), "results saved; acknowledged to the agent");
                a.acks.extend(saved.into_iter().map(|(_, key)| key));
                a.acks_since.get_or_insert(now);
            }
        }
    }
}
