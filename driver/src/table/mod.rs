//! [`ResultTable`]: the results a dispatcher keeps, pending until a worker answers, then done
//! until fetched.
//!
//! This file holds the table and what records results (`complete`); beside it: `waits` (the
//! blocking and async waits for results), `graph` (tasks waiting for other tasks' results),
//! `inbox` (what streams of results are told), `feed` (the lines tasks print), `slots` (the
//! slots by task number) and `by_task` (maps keyed by task).

mod by_task;
pub(crate) mod feed;
mod graph;
mod inbox;
mod slots;
#[cfg(test)]
mod tests;
mod waits;

pub(crate) use by_task::{ByTask, TaskSet};
pub(crate) use inbox::Inbox;
pub(crate) use waits::AsyncWait;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::ids::DriverTaskId;
use tracing::debug;

use crate::error::DispatchError;
use crate::results::{TaskId, TaskResult};
use feed::OutputFeed;
use graph::{Consequence, Graph, Kept, ReleaseTo};
use inbox::Deliveries;
use slots::{Kinds, Slot, Slots};

/// Hands out distinct origins so ids of two dispatchers never match.
static NEXT_ORIGIN: AtomicU32 = AtomicU32::new(1);

/// Results a dispatcher holds: pending until a worker answers, then done until fetched.
///
/// Filled from the dispatcher's runtime thread, read from user threads; a condition variable
/// wakes waiting readers whenever a batch lands. The lock is never held while waiting.
#[derive(Debug)]
pub(crate) struct ResultTable {
    state: Mutex<TableState>,
    changed: Condvar,
    /// Counts batches of results, so a waiter can watch for news without the lock.
    batches: AtomicU64,
    /// Lines streamed tasks printed, for the dispatcher's consumer; each task's lines are here
    /// before its result is.
    pub(crate) output: OutputFeed,
    /// Sends a task whose inputs came in ([`Graph`]); set by the dispatcher.
    releaser: ReleaseTo,
}

#[derive(Debug)]
struct TableState {
    origin: u32,
    /// The number of the next task; numbers below it were issued.
    next: u64,
    slots: Slots,
    /// The name and signature of each pending slot's task, by number.
    kinds: Kinds,
    /// What is known about the delay of some pending tasks (no agent can run them yet).
    notes: ByTask<String>,
    /// Slots still `Pending`, so waiting for all needs no scan.
    pending: usize,
    /// Set when no more tasks can run: new tasks end with this outcome at once.
    closed: Option<Outcome>,
    /// Tasks someone wants to hear about as soon as they finish (`imap_unordered`, and its
    /// async twin `completed`).
    subscribers: ByTask<Arc<Inbox>>,
    /// Futures waiting for a task ([`crate::awaits`]): woken when it is done.
    wakers: ByTask<Vec<Waker>>,
    /// Futures waiting until no task is pending (`join_async`).
    idle_wakers: Vec<Waker>,
    /// Tasks whose result nobody will fetch (an aborted future's): dropped when it comes.
    discarded: TaskSet,
    /// Reports dropped because their task already had a result ([`DispatcherStats::duplicates`]).
    duplicates: u64,
    /// Tasks waiting for others before they are sent.
    graph: Graph,
    /// Tasks that tasks sent with inputs for the backend to hold wait on, until those are sent.
    kept: ByTask<Kept>,
    /// Blocking fetches asleep on `changed`, for tests that must know a wait has begun.
    #[cfg(test)]
    sleepers: usize,
}

impl TableState {
    /// The results of `ids`, every one done, in the order of `ids`: moved out when `clear` (an
    /// id asked for twice gets a copy of its first), copied otherwise.
    fn take_done<O>(&mut self, ids: &[TaskId<O>], clear: bool) -> Vec<TaskResult> {
        if !clear {
            return ids
                .iter()
                .filter_map(|id| match self.slots.get(id.seq) {
                    Some(Slot::Done(r)) => Some(TaskResult::clone(r)),
                    _ => None,
                })
                .collect();
        }
        let mut results: Vec<TaskResult> = Vec::with_capacity(ids.len());
        for id in ids {
            match self.slots.remove(id.seq) {
                Some(Slot::Done(r)) => results.push(*r),
                _ => {
                    if let Some(first) = results.iter().find(|r| r.id == id.seq) {
                        results.push(first.clone());
                    }
                }
            }
        }
        results
    }

    /// Every result not fetched, in submission order, moved out.
    fn drain_done(&mut self) -> Vec<TaskResult> {
        let mut all: Vec<TaskResult> = (self.slots.drain())
            .filter_map(|(_, s)| match s {
                Slot::Done(r) => Some(*r),
                Slot::Pending(_) | Slot::Fetched => None,
            })
            .collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// The name of task `seq`, if it is pending or done here.
    fn name_of(&self, seq: u64) -> Option<String> {
        match self.slots.get(seq)? {
            Slot::Pending(kind) => Some(self.kinds.get(*kind).0.to_string()),
            Slot::Done(r) => Some(r.task.to_string()),
            Slot::Fetched => None,
        }
    }

    /// Checks that this table issued every one of `ids` and that none was fetched.
    fn check_ids<O>(&self, ids: &[TaskId<O>]) -> Result<(), DispatchError> {
        for id in ids {
            if id.origin != self.origin || id.seq == 0 || id.seq >= self.next {
                return Err(DispatchError::UnknownTask(id.seq));
            }
            if self.slots.get(id.seq).is_none() {
                return Err(DispatchError::AlreadyFetched(id.seq));
            }
        }
        Ok(())
    }

    /// What is known about the delay of pending task `id`, if anything.
    fn detail(&self, id: DriverTaskId, kind: u32) -> Option<String> {
        let note = self.notes.get(&id)?;
        Some(format!("task {id} `{}`: {note}", self.kinds.get(kind).0))
    }
}

impl ResultTable {
    pub(crate) fn new() -> Self {
        Self::with_origin(NEXT_ORIGIN.fetch_add(1, Ordering::Relaxed))
    }

    /// A table whose ids carry `origin` (a cluster session's, the same in every process).
    pub(crate) fn with_origin(origin: u32) -> Self {
        Self {
            state: Mutex::new(TableState {
                origin,
                next: 1,
                slots: Slots::default(),
                kinds: Kinds::default(),
                notes: ByTask::default(),
                pending: 0,
                closed: None,
                subscribers: ByTask::default(),
                wakers: ByTask::default(),
                idle_wakers: Vec::new(),
                discarded: TaskSet::default(),
                duplicates: 0,
                graph: Graph::default(),
                kept: ByTask::default(),
                #[cfg(test)]
                sleepers: 0,
            }),
            changed: Condvar::new(),
            batches: AtomicU64::new(0),
            output: OutputFeed::default(),
            releaser: ReleaseTo::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The origin of the ids issued now.
    pub(crate) fn origin(&self) -> u32 {
        self.lock().origin
    }

    /// Changes the origin of the ids issued from now on (before any is).
    pub(crate) fn set_origin(&self, origin: u32) {
        self.lock().origin = origin;
    }

    /// Takes on tasks of an attached session: each of `ids` is pending until its result
    /// arrives, and new ids start at `next` at the earliest.
    pub(crate) fn adopt(&self, ids: &[DriverTaskId], next: u64) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let kind = st.kinds.id("attached", "");
        for &id in ids {
            if st.slots.insert(id.get(), Slot::Pending(kind)) {
                st.pending += 1;
            }
        }
        st.next = st.next.max(next);
    }

    /// Issues an id for a new task. When the table is closed the task is settled at once and
    /// `true` comes back with the id.
    pub(crate) fn register<O>(
        &self,
        task: &'static str,
        signature: &'static str,
    ) -> (TaskId<O>, bool) {
        let mut st = self.lock();
        let seq = st.next;
        st.next += 1;
        let id = TaskId::new(st.origin, seq);
        let kind = st.kinds.id(task, signature);
        st.slots.insert(seq, Slot::Pending(kind));
        st.pending += 1;
        let closed = st.closed.clone();
        drop(st);
        let is_closed = closed.is_some();
        if let Some(outcome) = closed {
            self.settle(DriverTaskId::new(seq), outcome);
        }
        (id, is_closed)
    }

    /// Settles one task that never reached a worker.
    pub(crate) fn settle(&self, id: DriverTaskId, outcome: Outcome) {
        self.complete(vec![Report::unstarted(id, outcome)]);
    }

    /// Tells `inbox` of each of `ids` as soon as it is done (at once of those already done).
    pub(crate) fn subscribe(&self, ids: &[DriverTaskId], inbox: &Arc<Inbox>) {
        let mut done = Vec::new();
        let mut st = self.lock();
        for &id in ids {
            match st.slots.get(id.get()) {
                Some(Slot::Pending(_)) => {
                    st.subscribers.insert(id, inbox.clone());
                }
                Some(Slot::Done(_)) => done.push(id),
                Some(Slot::Fetched) | None => {}
            }
        }
        drop(st);
        inbox.deliver(&done);
    }

    /// Drops the subscriptions of tasks nobody waits for any more.
    pub(crate) fn unsubscribe(&self, ids: &[DriverTaskId]) {
        let mut st = self.lock();
        for id in ids {
            st.subscribers.remove(id);
        }
    }

    /// Attaches what is known about a delay to pending tasks.
    pub(crate) fn note(&self, ids: &[DriverTaskId], note: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        for &id in ids {
            if let Some(Slot::Pending(_)) = st.slots.get(id.get()) {
                st.notes.insert(id, note.to_string());
            }
        }
    }

    /// Records a batch of finished tasks (from either backend) and wakes waiters. Tasks that
    /// waited on them are released (sent) or, when an input failed, settled in the same go.
    pub(crate) fn complete(&self, batch: Vec<Report<DriverTaskId>>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut wake = Vec::new();
        let mut deliveries = Deliveries::default();
        let mut released = Vec::new();
        let mut consequences = Vec::new();
        // Reports of the batch, then those of tasks that will not run because an input failed
        // (`derived`: one may find its task settled already, by the same shutdown, say).
        let mut batch = batch.into_iter();
        let mut failed = Vec::new();
        loop {
            let (mut r, derived) = match batch.next() {
                Some(r) => (r, false),
                None => match failed.pop() {
                    Some(r) => (r, true),
                    None => break,
                },
            };
            let id = r.id;
            self.output.add_dropped(id, &mut r.run);
            if let Outcome::DependencyFailed { task, name, .. } = &mut r.run.outcome
                && name.is_empty()
            {
                // The server did not know the failed task's name: this table may.
                *name = st.name_of(*task).unwrap_or_default();
            }
            let slot = st.slots.get_mut(id.get());
            let Some(slot @ &mut Slot::Pending(kind)) = slot else {
                if !derived {
                    // Its first result came before (or it was fetched): a copy sent again.
                    st.duplicates += 1;
                    debug!(task = %id, "a second result of a task was dropped");
                }
                continue;
            };
            st.pending -= 1;
            let (task, signature) = st.kinds.get(kind);
            if !st.kept.is_empty()
                && let Some(kept) = st.kept.get_mut(&id)
            {
                kept.ended(task, &r.run.outcome);
            }
            if !st.graph.is_empty() {
                st.graph.settled(id, task, &r.run.outcome, &mut consequences);
                for consequence in consequences.drain(..) {
                    match consequence {
                        Consequence::Released(call) => released.push(call),
                        Consequence::Failed(task, outcome) => {
                            failed.push(Report::unstarted(task, outcome));
                        }
                    }
                }
            }
            if !st.discarded.is_empty() && st.discarded.remove(&id) {
                st.slots.remove(id.get());
                continue;
            }
            if !st.subscribers.is_empty()
                && let Some(inbox) = st.subscribers.remove(&id)
            {
                deliveries.add(inbox, id);
            }
            if !st.wakers.is_empty()
                && let Some(wakers) = st.wakers.remove(&id)
            {
                wake.extend(wakers);
            }
            if !st.notes.is_empty() {
                st.notes.remove(&id);
            }
            let task = Cow::Borrowed(task);
            let (worker, run) = (r.worker, r.run);
            let result = TaskResult { id: id.get(), task, worker, run, signature };
            *slot = Slot::Done(Box::new(result));
        }
        if st.pending == 0 {
            wake.append(&mut st.idle_wakers);
        }
        drop(guard);
        deliveries.deliver();
        for waker in wake {
            waker.wake();
        }
        self.batches.fetch_add(1, Ordering::Release);
        self.changed.notify_all();
        self.release(released);
    }

    /// Refuses new tasks and settles every pending one, both with `outcome` (unless the table
    /// was closed before, whose outcome stays for new tasks).
    pub(crate) fn close(&self, outcome: Outcome) {
        let pending: Vec<DriverTaskId> = {
            let mut st = self.lock();
            st.closed.get_or_insert_with(|| outcome.clone());
            st.slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Pending(_)))
                .map(|(seq, _)| DriverTaskId::new(seq))
                .collect()
        };
        let batch =
            (pending.into_iter()).map(|id| Report::unstarted(id, outcome.clone())).collect();
        self.complete(batch);
    }

    /// Waits until every listed task is done, then returns their results in the order of `ids`.
    /// Of `ids`, those not finished yet, checking first that this table issued every one (an id
    /// of another dispatcher, or never issued, is an error). Fetched and finished ones are left
    /// out: a cancel does nothing to them.
    pub(crate) fn unfinished<O>(
        &self,
        ids: &[TaskId<O>],
    ) -> Result<Vec<DriverTaskId>, DispatchError> {
        let st = self.lock();
        for id in ids {
            if id.origin != st.origin || id.seq == 0 || id.seq >= st.next {
                return Err(DispatchError::UnknownTask(id.seq));
            }
        }
        Ok(ids
            .iter()
            .filter(|id| matches!(st.slots.get(id.seq), Some(Slot::Pending(_))))
            .map(|id| DriverTaskId::new(id.seq))
            .collect())
    }

    /// Every task not finished yet, in submission order.
    pub(crate) fn all_unfinished(&self) -> Vec<DriverTaskId> {
        let st = self.lock();
        let mut ids: Vec<DriverTaskId> = (st.slots.iter())
            .filter(|(_, slot)| matches!(slot, Slot::Pending(_)))
            .map(|(seq, _)| DriverTaskId::new(seq))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether task `id` is issued and not finished yet.
    pub(crate) fn is_pending(&self, id: DriverTaskId) -> bool {
        matches!(self.lock().slots.get(id.get()), Some(Slot::Pending(_)))
    }

    /// Tasks submitted and not yet finished.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending
    }

    /// What the table has counted.
    pub(crate) fn stats(&self) -> DispatcherStats {
        let st = self.lock();
        DispatcherStats {
            pending: st.pending,
            waiting: st.graph.waiting(),
            duplicates: st.duplicates,
        }
    }
}

/// What a dispatcher has counted since it was made ([`Dispatcher::stats`]).
///
/// [`Dispatcher::stats`]: crate::Dispatcher::stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// Tasks submitted and not yet finished.
    pub pending: usize,
    /// Of those, tasks waiting for other tasks' results (or ends) before they are sent: see
    /// [`Dispatcher::submit`](crate::Dispatcher::submit) and
    /// [`Dispatcher::after`](crate::Dispatcher::after).
    pub waiting: usize,
    /// Results that arrived for a task that already had one, and were dropped: the caller
    /// sees each task's result once whatever this says. On a cluster a server sends again,
    /// after a driver reconnects, the results whose acknowledgement it had not received, so a
    /// few after a lost connection are expected; any other is a fault worth reporting.
    pub duplicates: u64,
}
