//! [`ResultTable`]: the results a dispatcher keeps, pending until a worker answers, then done
//! until fetched.

pub(crate) mod feed;
mod graph;
mod inbox;
mod slots;

pub(crate) use inbox::Inbox;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use blitzen_common::inputs::{Part, Parts};
use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::ids::DriverTaskId;
use bytes::Bytes;
use tracing::debug;

use crate::call::{Call, Releaser};
use crate::error::DispatchError;
use crate::progress::{Progress, REDRAW};
use crate::results::{Fetch, Predecessor, TaskId, TaskResult};
use feed::OutputFeed;
use graph::{Consequence, Graph, Wait, dependency_failed};
use inbox::Deliveries;
use slots::{Kinds, Slot, Slots};

/// How long a waiter watches for results before sleeping ([`ResultTable::spin_briefly`]).
const SPIN: Duration = Duration::from_micros(250);

/// A waiter spins only when this few results are missing: then the next batch may well be the
/// last, and soon.
const SPIN_FOR_TASKS: usize = 4;

/// Hands out distinct origins so ids of two dispatchers never match.
static NEXT_ORIGIN: AtomicU32 = AtomicU32::new(1);

/// A map keyed by task: task numbers are dense and not chosen by anyone hostile, so a
/// multiply-and-rotate hash serves (SipHash, the default, is several times slower per lookup,
/// and a stream of 100,000 results makes two lookups per result).
pub(crate) type ByTask<V> = HashMap<DriverTaskId, V, BuildHasherDefault<TaskHasher>>;
/// A set of tasks (see [`ByTask`]).
pub(crate) type TaskSet = HashSet<DriverTaskId, BuildHasherDefault<TaskHasher>>;

/// The hasher of [`ByTask`]: Fibonacci hashing of the task number.
#[derive(Debug, Default)]
pub(crate) struct TaskHasher(u64);

impl Hasher for TaskHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What an async wait for results keeps between polls (see [`ResultTable::poll_fetch`]).
#[derive(Debug, Default)]
pub(crate) struct AsyncWait {
    /// How many of the ids, from the first, are known not to be pending.
    ready: usize,
    /// Until when the wait keeps its task awake, once it waits for few results.
    spin_until: Option<Instant>,
}

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

/// The table's [`Releaser`], once set.
#[derive(Default)]
struct ReleaseTo(OnceLock<Releaser>);

impl std::fmt::Debug for ReleaseTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ReleaseTo(set)" } else { "ReleaseTo(unset)" })
    }
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

    /// Sends tasks whose inputs are all in; one the backend cannot take is settled.
    fn release(&self, calls: Vec<Call>) {
        for call in calls {
            let id = call.id;
            let sent = match self.releaser.0.get() {
                Some(send) => send(call),
                None => Err(Outcome::Lost { reason: "nothing sends released tasks".into() }),
            };
            if let Err(outcome) = sent {
                self.settle(id, outcome);
            }
        }
    }

    /// Sets what sends released tasks; the first call wins.
    pub(crate) fn set_releaser(&self, releaser: Releaser) {
        let _ = self.releaser.0.set(releaser);
    }

    /// Registers a task that waits for others (see [`Graph`]), as [`register`](Self::register)
    /// does one that does not. Every task it names — in `parts` (results standing for
    /// arguments) and `after` — must be this table's and not fetched, or nothing is registered.
    /// Returns its id, and its call (arguments spliced) when nothing is left to wait for:
    /// then the caller sends it.
    pub(crate) fn register_waiting<O>(
        &self,
        task: &'static str,
        mut call: Call,
        parts: Parts,
        after: &[Predecessor],
    ) -> Result<(TaskId<O>, Option<Call>), DispatchError> {
        let mut st = self.lock();
        let mut values = Vec::with_capacity(parts.parts.len());
        let mut waits = Vec::new();
        let mut failed = None;
        let waited = (parts.parts.iter().enumerate())
            .filter_map(|(i, part)| match part {
                Part::Result { origin, seq } => Some((*origin, *seq, Wait::Input(i))),
                _ => None,
            })
            .chain(
                after
                    .iter()
                    .map(|p| (p.origin, p.seq, if p.any { Wait::AfterAny } else { Wait::After })),
            );
        for (origin, seq, wait) in waited {
            if origin != st.origin || seq == 0 || seq >= st.next {
                return Err(DispatchError::UnknownTask(seq));
            }
            let on = DriverTaskId::new(seq);
            match (st.slots.get(seq), wait) {
                (Some(Slot::Pending(_)), _) => waits.push((on, wait)),
                (Some(Slot::Done(r)), _) => match (&r.run.outcome, wait) {
                    (Outcome::Value(_), _) | (_, Wait::AfterAny) => {}
                    (other, _) => {
                        failed.get_or_insert_with(|| dependency_failed(on, &r.task, other));
                    }
                },
                // Fetched: it ended, which is all `after_any` waits for.
                (_, Wait::AfterAny) => {}
                _ => return Err(DispatchError::AlreadyFetched(seq)),
            }
        }
        for part in parts.parts {
            values.push(match part {
                Part::Value(bytes) => Some(bytes),
                Part::Result { seq, .. } => match st.slots.get(seq) {
                    Some(Slot::Done(r)) => match &r.run.outcome {
                        Outcome::Value(bytes) => Some(bytes.clone()),
                        _ => Some(Bytes::new()),
                    },
                    _ => None,
                },
                Part::Unencodable(_) => Some(Bytes::new()),
            });
        }
        let seq = st.next;
        st.next += 1;
        let id = TaskId::new(st.origin, seq);
        let kind = st.kinds.id(task, call.signature);
        st.slots.insert(seq, Slot::Pending(kind));
        st.pending += 1;
        call.id = id.task();
        let settled = st.closed.clone().or(failed);
        if settled.is_none() && !waits.is_empty() {
            st.graph.park(call, parts.framing, values, waits);
            return Ok((id, None));
        }
        drop(st);
        if let Some(outcome) = settled {
            self.settle(id.task(), outcome);
            return Ok((id, None));
        }
        let values: Vec<Bytes> = values.into_iter().map(Option::unwrap_or_default).collect();
        call.args = Parts::splice(&parts.framing, &values);
        Ok((id, Some(call)))
    }

    /// Settles those of `ids` still waiting for others (they were never sent) with `outcome`;
    /// returns the others.
    pub(crate) fn cancel_waiting(
        &self,
        ids: Vec<DriverTaskId>,
        outcome: &Outcome,
    ) -> Vec<DriverTaskId> {
        let (waiting, sent): (Vec<DriverTaskId>, Vec<DriverTaskId>) = {
            let st = self.lock();
            if st.graph.is_empty() {
                return ids;
            }
            ids.into_iter().partition(|&id| st.graph.is_parked(id))
        };
        if !waiting.is_empty() {
            self.complete(
                waiting.into_iter().map(|id| Report::unstarted(id, outcome.clone())).collect(),
            );
        }
        sent
    }

    /// Before sleeping on the condition variable, watches for a new batch of results for a
    /// short while: a result that arrives within microseconds is then picked up without the
    /// cost of a sleep and a wake-up, which on a virtual machine is tens of microseconds.
    /// Returns the guard, taken again.
    fn spin_briefly<'a>(&'a self, st: MutexGuard<'a, TableState>) -> MutexGuard<'a, TableState> {
        let seen = self.batches.load(Ordering::Acquire);
        drop(st);
        let start = Instant::now();
        while self.batches.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        self.lock()
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

    pub(crate) fn fetch<O>(
        &self,
        ids: &[TaskId<O>],
        fetch: Fetch,
    ) -> Result<Vec<TaskResult>, DispatchError> {
        let mut st = self.lock();
        st.check_ids(ids)?;
        let deadline = fetch.timeout.map(|t| Instant::now() + t);
        let mut progress = Progress::new(ids.len());
        let mut ready = 0;
        let mut spun = false;
        loop {
            while ready < ids.len() && matches!(st.slots.get(ids[ready].seq), Some(Slot::Done(_))) {
                ready += 1;
            }
            if ready == ids.len() {
                break;
            }
            if !spun && ids.len() - ready <= SPIN_FOR_TASKS {
                spun = true;
                st = self.spin_briefly(st);
                continue;
            }
            progress.update(|| {
                ids.iter().filter(|id| matches!(st.slots.get(id.seq), Some(Slot::Done(_)))).count()
            });
            st = match deadline {
                None if progress.is_enabled() => {
                    self.changed.wait_timeout(st, REDRAW).unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.changed.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        let mut pending = 0;
                        let mut detail = None;
                        for id in ids {
                            if let Some(&Slot::Pending(kind)) = st.slots.get(id.seq) {
                                pending += 1;
                                if detail.is_none() {
                                    detail = st.detail(id.task(), kind);
                                }
                            }
                        }
                        return Err(DispatchError::WaitTimedOut {
                            waited: fetch.timeout.unwrap_or_default(),
                            pending,
                            total: ids.len(),
                            detail,
                        });
                    };
                    let left = if progress.is_enabled() { left.min(REDRAW) } else { left };
                    self.changed.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
        progress.finish();
        Ok(st.take_done(ids, fetch.clear))
    }

    /// Waits until every task is done, then removes and returns all results not yet fetched,
    /// in submission order. With a `limit`, gives up after it with
    /// [`DispatchError::WaitTimedOut`], keeping every result.
    pub(crate) fn take_all(
        &self,
        limit: Option<Duration>,
    ) -> Result<Vec<TaskResult>, DispatchError> {
        let mut st = self.lock();
        let total = st.pending;
        let deadline = limit.map(|l| Instant::now() + l);
        let mut progress = Progress::new(total);
        while st.pending > 0 {
            let left = st.pending;
            progress.update(|| total.saturating_sub(left));
            let mut wait = progress.is_enabled().then_some(REDRAW);
            if let Some(deadline) = deadline {
                let Some(until) = deadline.checked_duration_since(Instant::now()) else {
                    let detail = st.slots.iter().find_map(|(seq, slot)| match slot {
                        &Slot::Pending(kind) => st.detail(DriverTaskId::new(seq), kind),
                        _ => None,
                    });
                    return Err(DispatchError::WaitTimedOut {
                        waited: limit.unwrap_or_default(),
                        pending: st.pending,
                        total: st.slots.len(),
                        detail,
                    });
                };
                wait = Some(wait.map_or(until, |w| w.min(until)));
            }
            st = match wait {
                Some(wait) => {
                    self.changed.wait_timeout(st, wait).unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.changed.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
        }
        progress.finish();
        Ok(st.drain_done())
    }

    /// The async face of [`fetch`](Self::fetch): the results of `ids` once every one is done;
    /// until then `waker` is woken when the first of them not done yet is. The ids were checked
    /// ([`check`](Self::check)) when the wait began; `wait` is this wait's own state, kept
    /// between polls.
    ///
    /// Like the blocking wait, which spins briefly before it sleeps, a wait for the last few
    /// results keeps its task awake for a short while ([`SPIN`]) by waking it again at once:
    /// the runtime polls its other tasks in between and does not park, so a result that comes
    /// within microseconds costs no sleep and wake-up of the thread.
    pub(crate) fn poll_fetch<O>(
        &self,
        ids: &[TaskId<O>],
        clear: bool,
        wait: &mut AsyncWait,
        waker: &Waker,
    ) -> Poll<Vec<TaskResult>> {
        let mut st = self.lock();
        // Done, or fetched by another wait in the meantime (`take_done` leaves those out).
        while wait.ready < ids.len()
            && !matches!(st.slots.get(ids[wait.ready].seq), Some(Slot::Pending(_)))
        {
            wait.ready += 1;
        }
        let Some(id) = ids.get(wait.ready) else {
            return Poll::Ready(st.take_done(ids, clear));
        };
        let wakers = st.wakers.entry(id.task()).or_default();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        drop(st);
        if ids.len() - wait.ready <= SPIN_FOR_TASKS {
            let until = *wait.spin_until.get_or_insert_with(|| Instant::now() + SPIN);
            if Instant::now() < until {
                waker.wake_by_ref();
            }
        }
        Poll::Pending
    }

    /// Takes the results of finished `tasks` out, under one lock: each task's result, or `None`
    /// for one another call took first.
    pub(crate) fn take_finished(&self, tasks: &[DriverTaskId]) -> Vec<Option<TaskResult>> {
        let mut st = self.lock();
        let mut take = |task: &DriverTaskId| {
            if !matches!(st.slots.get(task.get()), Some(Slot::Done(_))) {
                return None;
            }
            match st.slots.remove(task.get()) {
                Some(Slot::Done(r)) => Some(*r),
                _ => None,
            }
        };
        tasks.iter().map(&mut take).collect()
    }

    /// Checks that this table issued every one of `ids` and that none was fetched.
    pub(crate) fn check<O>(&self, ids: &[TaskId<O>]) -> Result<(), DispatchError> {
        self.lock().check_ids(ids)
    }

    /// The async face of [`take_all`](Self::take_all): every result not fetched once no task
    /// is pending; until then `waker` is woken when none is.
    pub(crate) fn poll_take_all(&self, waker: &Waker) -> Poll<Vec<TaskResult>> {
        let mut st = self.lock();
        if st.pending > 0 {
            if !st.idle_wakers.iter().any(|w| w.will_wake(waker)) {
                st.idle_wakers.push(waker.clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(st.drain_done())
    }

    /// Nobody will fetch task `id`: its result is dropped when it comes (at once if it came).
    pub(crate) fn discard(&self, id: DriverTaskId) {
        let mut st = self.lock();
        match st.slots.get(id.get()) {
            Some(Slot::Pending(_)) => {
                st.discarded.insert(id);
            }
            Some(Slot::Done(_)) => {
                st.slots.remove(id.get());
            }
            Some(Slot::Fetched) | None => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_common::{DecodeTarget, TaskError};

    fn done(seq: u64, value: u64) -> Report<DriverTaskId> {
        let bytes = blitzen_common::task::encode_value(&value).expect("encodes");
        Report::unstarted(DriverTaskId::new(seq), Outcome::Value(bytes))
    }

    #[test]
    fn fetch_returns_in_the_order_asked_and_clears_by_default() {
        let table = ResultTable::new();
        let ids: Vec<TaskId<u64>> = (0..3).map(|_| table.register("t", "sig").0).collect();
        table.complete(vec![done(3, 30), done(1, 10), done(2, 20)]);
        let order = [ids[2], ids[0], ids[1]];
        let got: Vec<u64> = table
            .fetch(&order, Fetch::keep())
            .expect("known")
            .iter()
            .map(|r| r.decode().expect("value"))
            .collect();
        assert_eq!(got, [30, 10, 20]);
        assert_eq!(table.fetch(&order, Fetch::default()).expect("kept").len(), 3);
        assert!(matches!(
            table.fetch(&ids[..1], Fetch::default()),
            Err(DispatchError::AlreadyFetched(1))
        ));
    }

    #[test]
    fn an_id_asked_for_twice_in_one_fetch_comes_back_twice() {
        let table = ResultTable::new();
        let ids: Vec<TaskId<u64>> = (0..2).map(|_| table.register("t", "sig").0).collect();
        table.complete(vec![done(1, 10), done(2, 20)]);
        let twice = [ids[1], ids[0], ids[1]];
        let got: Vec<u64> = (table.fetch(&twice, Fetch::default()).expect("known").iter())
            .map(|r| r.decode().expect("value"))
            .collect();
        assert_eq!(got, [20, 10, 20]);
        assert!(matches!(
            table.fetch(&ids[..1], Fetch::default()),
            Err(DispatchError::AlreadyFetched(1))
        ));
    }

    #[test]
    fn foreign_ids_and_wait_limits_are_errors_not_hangs() {
        let a = ResultTable::new();
        let b = ResultTable::new();
        let (id, _) = b.register::<u64>("t", "sig");
        assert!(matches!(a.fetch(&[id], Fetch::default()), Err(DispatchError::UnknownTask(1))));
        let err = b.fetch(&[id], Fetch::default().within(Duration::from_millis(20)));
        assert!(matches!(err, Err(DispatchError::WaitTimedOut { pending: 1, total: 1, .. })));
        b.note(&[id.task()], "no agent can run it");
        let err = b.fetch(&[id], Fetch::default().within(Duration::from_millis(1)));
        assert!(format!("{:?}", err).contains("no agent can run it"), "{err:?}");
        b.close(Outcome::Cancelled { reason: "closing".into() });
        let r = b.fetch(&[id], Fetch::default()).expect("settled");
        assert!(matches!(r[0].outcome(), Err(TaskError::Cancelled { .. })));
        let (late, closed) = b.register::<u64>("t", "sig");
        assert!(closed);
        assert!(matches!(
            b.fetch(&[late], Fetch::default()).expect("settled")[0].outcome(),
            Err(TaskError::Cancelled { .. })
        ));
    }

    #[test]
    fn a_second_result_is_dropped_and_counted_whether_or_not_the_first_was_fetched() {
        let table = ResultTable::new();
        let ids: Vec<TaskId<u64>> = (0..2).map(|_| table.register("t", "sig").0).collect();
        table.complete(vec![done(1, 10), done(2, 20)]);
        assert_eq!(table.stats().duplicates, 0);
        table.complete(vec![done(1, 11)]);
        let first = table.fetch(&ids[..1], Fetch::default()).expect("done");
        assert_eq!(first[0].decode::<u64>().expect("value"), 10, "the first result stays");
        table.complete(vec![done(1, 12), done(2, 21)]);
        let stats = table.stats();
        assert_eq!((stats.duplicates, stats.pending), (3, 0));
        let second = table.fetch(&ids[1..], Fetch::default()).expect("done");
        assert_eq!(second[0].decode::<u64>().expect("value"), 20);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_a_decode_error() {
        let table = ResultTable::new();
        let (id, _) = table.register::<String>("t", "sig");
        table.complete(vec![done(1, 5)]);
        let r = table.fetch(&[id], Fetch::default()).expect("known");
        let err = r[0].decode::<String>().expect_err("u64 is not a String");
        assert!(matches!(err, TaskError::Decode { what: DecodeTarget::Result, .. }), "{err}");
    }
}
