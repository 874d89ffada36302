//! Tasks that wait for others before they are queued: for their results, which stand among
//! their arguments, or only for their end.
//!
//! A submission with [`Inputs`] is held here, not queued, with what it waits for. Each task of
//! the session it waits on is looked up once: a result the server still holds (the driver
//! holds back its acknowledgement of a result while a task sent after it may wait on it) meets
//! the wait at once; any other task is one still held (queued, running, or waiting itself), and
//! the dependent waits for its end. When a task ends ([`Core::inputs_ended`]) its value goes
//! into the arguments that wait for it, and a task whose last input came in has its arguments
//! spliced and is queued behind its driver's others; a failure fails every task that waits on it
//! with [`Outcome::DependencyFailed`], and those in turn theirs, in the same turn. A task can
//! only wait on tasks submitted before it, so there are no cycles.
//!
//! With a data directory a waiting task is saved with its inputs, and again each time one comes
//! in (in the batch that saves the result that met it), so after a restart it waits on what it
//! still waited on, and a result the driver acknowledged since is in it already.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use blitzen_protocol::ids::{DriverTaskId, IdHash, TaskKey};
use blitzen_protocol::inputs::{Inputs, Wait};
use blitzen_protocol::{Outcome, Report};
use tracing::debug;

use super::parked::ParkedInputs;
use super::tasks::DriverKey;
use super::{Core, KindId};
use crate::store::Change;

/// The tasks waiting for others, and who waits on whom.
#[derive(Debug, Default)]
pub(super) struct Graph {
    /// Tasks held until their inputs are in, by key.
    parked: HashMap<TaskKey, Parked, IdHash>,
    /// For each task of a session that others wait on, those tasks and what they wait for.
    /// (Ids come from authenticated drivers: a hash of their numbers serves, see [`IdHash`].)
    waiters: HashMap<DriverKey, ByNumber, IdHash>,
}

/// A driver's waited-on tasks, by their number: a driver numbers its tasks one after another,
/// so the waited-on ones are a window of numbers, kept in chunks of [`CHUNK`] numbers from the
/// lowest (16 bytes a number in the window, rather than a hash table's entry). A chunk with no
/// waiters left is freed, so a window with gaps costs only its chunks in use, and a window that
/// grows never doubles its memory at once.
#[derive(Debug, Default)]
struct ByNumber {
    /// The number of the first slot of `chunks[0]`, a multiple of [`CHUNK`].
    base: u64,
    chunks: VecDeque<Option<Chunk>>,
}

/// Numbers per chunk of a [`ByNumber`] window (16 KiB).
const CHUNK: usize = 1024;

#[derive(Debug)]
struct Chunk {
    /// Slots with waiters.
    used: usize,
    slots: Box<[Option<Waiters>]>,
}

impl ByNumber {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The chunk index and slot of number `n`, if it is in the window.
    fn place(&self, n: u64) -> Option<(usize, usize)> {
        let at = usize::try_from(n.checked_sub(self.base)?).ok()?;
        Some((at / CHUNK, at % CHUNK))
    }

    fn take(&mut self, id: DriverTaskId) -> Option<Waiters> {
        let (c, at) = self.place(id.get())?;
        let chunk = self.chunks.get_mut(c)?.as_mut()?;
        let taken = chunk.slots.get_mut(at)?.take()?;
        chunk.used -= 1;
        if chunk.used == 0 {
            self.chunks[c] = None;
            while matches!(self.chunks.front(), Some(None)) {
                self.chunks.pop_front();
                self.base += CHUNK as u64;
            }
            while matches!(self.chunks.back(), Some(None)) {
                self.chunks.pop_back();
            }
        }
        Some(taken)
    }

    fn add(&mut self, id: DriverTaskId, key: TaskKey, wait: PackedWait) {
        let n = id.get();
        let first = n - n % CHUNK as u64;
        if self.chunks.is_empty() {
            self.base = first;
        }
        while first < self.base {
            self.chunks.push_front(None);
            self.base -= CHUNK as u64;
        }
        let Some((c, at)) = self.place(n) else { return };
        if c >= self.chunks.len() {
            self.chunks.resize_with(c + 1, || None);
        }
        let chunk = self.chunks[c].get_or_insert_with(|| Chunk {
            used: 0,
            slots: std::iter::repeat_with(|| None).take(CHUNK).collect(),
        });
        let slot = &mut chunk.slots[at];
        if slot.is_none() {
            chunk.used += 1;
        }
        *slot = Some(Waiters::push(slot.take(), key, wait));
    }
}

/// The tasks waiting on one task: most often one (a tree, a chain), kept without an allocation
/// — every byte here is paid once per task with a dependent in flight.
#[derive(Debug)]
enum Waiters {
    One(TaskKey, PackedWait),
    // Boxed: a `Vec` inline would make every entry, `One`s too, sixteen bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(TaskKey, PackedWait)>>),
}

impl Waiters {
    fn push(this: Option<Self>, key: TaskKey, wait: PackedWait) -> Self {
        match this {
            None => Waiters::One(key, wait),
            Some(Waiters::One(k, w)) => Waiters::Many(Box::new(vec![(k, w), (key, wait)])),
            Some(Waiters::Many(mut all)) => {
                all.push((key, wait));
                Waiters::Many(all)
            }
        }
    }

    fn into_vec(self) -> Vec<(TaskKey, Wait)> {
        match self {
            Waiters::One(k, w) => vec![(k, w.unpack())],
            Waiters::Many(all) => all.into_iter().map(|(k, w)| (k, w.unpack())).collect(),
        }
    }
}

/// A [`Wait`] in four bytes: an argument's index, or one of the two ends above every index.
#[derive(Debug, Clone, Copy)]
struct PackedWait(u32);

impl PackedWait {
    const AFTER: u32 = u32::MAX - 1;
    const AFTER_ANY: u32 = u32::MAX;

    fn pack(wait: Wait) -> Self {
        Self(match wait {
            // A submission's arguments fit in a frame: far fewer than 2³² − 2.
            Wait::Input(i) => u32::try_from(i).unwrap_or(Self::AFTER - 1).min(Self::AFTER - 1),
            Wait::After => Self::AFTER,
            Wait::AfterAny => Self::AFTER_ANY,
        })
    }

    fn unpack(self) -> Wait {
        match self.0 {
            Self::AFTER => Wait::After,
            Self::AFTER_ANY => Wait::AfterAny,
            i => Wait::Input(i as usize),
        }
    }
}

#[derive(Debug)]
struct Parked {
    /// Its arguments so far, and what it still waits for.
    inputs: Box<ParkedInputs>,
    /// Waits not met yet.
    missing: usize,
}

impl Graph {
    /// Tasks waiting, in all.
    pub(super) fn len(&self) -> usize {
        self.parked.len()
    }

    /// Forgets task `key` (it ended, or its driver left); those it waits on no longer wait
    /// for it (their entries are skipped when they end).
    pub(super) fn forget(&mut self, key: TaskKey) {
        if !self.parked.is_empty() {
            self.parked.remove(&key);
        }
    }

    /// Whether some task waits on another.
    pub(super) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Keeps only the waiting tasks whose key `keep` holds.
    pub(super) fn retain(&mut self, keep: impl Fn(TaskKey) -> bool) {
        self.parked.retain(|&key, _| keep(key));
    }

    /// Forgets what `driver`'s tasks waited on.
    pub(super) fn forget_driver(&mut self, driver: DriverKey) {
        self.waiters.remove(&driver);
    }

    /// The inputs of waiting task `key`, with those in so far.
    pub(super) fn inputs(&self, key: TaskKey) -> Option<Inputs> {
        self.parked.get(&key).map(|p| p.inputs.to_inputs())
    }
}

/// How a waited-on task ended, as far as its waiters are concerned: its value, or its failure.
enum Ended<'a> {
    Value(&'a bytes::Bytes),
    Failed(Outcome),
}

impl Core {
    /// Holds task `key` of `driver` until `inputs` are in (see the module's text); queues it at
    /// once if they are.
    pub(super) fn park(&mut self, driver: DriverKey, key: TaskKey, inputs: Inputs) {
        let mut parked = Parked { inputs: Box::new(ParkedInputs::from(inputs)), missing: 0 };
        let waits = parked.inputs.waits();
        let mut failed = None;
        // Tasks of the session numbered from here were never submitted.
        let issued = self.drivers.get(&driver).map_or(0, |d| d.next_id);
        for (on, wait) in waits {
            if on.get() >= issued {
                let message = format!("it waits on task {on}, which its driver never submitted");
                failed.get_or_insert(Outcome::BadArguments { message });
                continue;
            }
            match self.ended_before(driver, on) {
                Some(Ended::Value(value)) => {
                    let value = value.clone();
                    parked.inputs.meet(on, wait, Some(&value));
                }
                Some(Ended::Failed(outcome)) => {
                    if !parked.inputs.meet(on, wait, None) && failed.is_none() {
                        failed = Some(dependency_failed(on, self.name_of(None), &outcome));
                    }
                }
                None => {
                    let waiters = self.graph.waiters.entry(driver).or_default();
                    waiters.add(on, key, PackedWait::pack(wait));
                    parked.missing += 1;
                }
            }
        }
        if let Some(outcome) = failed {
            self.fail_waiting(key, outcome);
            return;
        }
        let missing = parked.missing;
        self.graph.parked.insert(key, parked);
        if missing == 0 {
            self.release(key);
        }
    }

    /// How task `on` of `driver` ended, if the server holds its result; `None`: it is still
    /// held itself.
    fn ended_before(&self, driver: DriverKey, on: DriverTaskId) -> Option<Ended<'_>> {
        let report = self.cache.get(driver, on).or_else(|| {
            // A queued task cancelled in a batch not saved yet: its result is not delivered.
            (self.unsaved_cancels.iter())
                .find(|(_, d, r, _)| *d == driver && r.id == on)
                .map(|(_, _, r, _)| r)
        })?;
        Some(match &report.run.outcome {
            Outcome::Value(bytes) => Ended::Value(bytes),
            other => Ended::Failed(other.clone()),
        })
    }

    /// The name people see for task `id`, of kind `kind` when known (empty when not: its
    /// driver knows it).
    fn name_of(&self, kind: Option<KindId>) -> String {
        kind.map(|kind| self.kind(kind).shown().to_string()).unwrap_or_default()
    }

    /// Task `report.id` of `driver` (of `kind`, when it got as far as being queued) ended: the
    /// tasks waiting on it get its value, or fail; those failed are added to `failed`, to be
    /// reported in turn. Returns whether any task waited on it.
    pub(super) fn inputs_ended(
        &mut self,
        driver: DriverKey,
        report: &Report<DriverTaskId>,
        kind: Option<KindId>,
        failed: &mut Vec<(DriverKey, Report<DriverTaskId>, Option<KindId>)>,
    ) -> bool {
        if self.graph.waiters.is_empty() {
            return false;
        }
        let Some(by_number) = self.graph.waiters.get_mut(&driver) else { return false };
        let Some(waiters) = by_number.take(report.id) else { return false };
        if by_number.is_empty() {
            self.graph.waiters.remove(&driver);
        }
        let value = match &report.run.outcome {
            Outcome::Value(bytes) => Some(bytes),
            _ => None,
        };
        let mut released = Vec::new();
        let mut changed = Vec::new();
        for (key, wait) in waiters.into_vec() {
            let Some(parked) = self.graph.parked.get_mut(&key) else { continue };
            if !parked.inputs.meet(report.id, wait, value) {
                let outcome = dependency_failed(report.id, self.name_of(kind), &report.run.outcome);
                self.graph.parked.remove(&key);
                if let Some(task) = self.take_task(key) {
                    failed.push((
                        task.driver,
                        Report::unstarted(task.id, outcome),
                        Some(task.kind),
                    ));
                }
                continue;
            }
            parked.missing -= 1;
            if parked.missing == 0 {
                released.push(key);
            } else {
                changed.push(key);
            }
        }
        for key in changed {
            self.record_waiting(key);
        }
        for key in released {
            self.release(key);
        }
        true
    }

    /// Every input of waiting task `key` is in: its arguments are spliced and it is queued.
    fn release(&mut self, key: TaskKey) {
        let Some(parked) = self.graph.parked.remove(&key) else { return };
        let Some(task) = self.tasks.get_mut(key) else { return };
        if parked.inputs.has_shared() {
            // Made on the agent, where the shared values are.
            self.shares.inputs.insert(key, Box::new(parked.inputs.to_inputs()));
        } else {
            task.args = parked.inputs.spliced();
        }
        let (driver, id, kind) = (task.driver, task.id, task.kind);
        debug!(%driver, task = %id, "inputs in; task queued");
        if let Some(d) = self.drivers.get_mut(&driver) {
            d.queues.entry(kind).or_default().push_back(key);
        }
        if let Some(session) = self.durable_session(driver) {
            let tasks = self.task_record(key).into_iter().collect();
            self.record(Change::Tasks { session, tasks });
        }
        if !self.can_run(kind) {
            self.queued_unrunnable(driver, kind, &[(id, key)], Instant::now());
        }
    }

    /// Waiting task `key` will not run: it ends with `outcome`, reported as any result (which
    /// fails those that wait on it in turn).
    fn fail_waiting(&mut self, key: TaskKey, outcome: Outcome) {
        self.graph.parked.remove(&key);
        if let Some(task) = self.take_task(key) {
            self.report(task.driver, Report::unstarted(task.id, outcome), Some(task.kind));
        }
    }

    /// Saves waiting task `key` with the inputs it has so far.
    fn record_waiting(&mut self, key: TaskKey) {
        let Some(driver) = self.tasks.get(key).map(|t| t.driver) else { return };
        if let Some(session) = self.durable_session(driver) {
            let tasks = self.task_record(key).into_iter().collect();
            self.record(Change::Tasks { session, tasks });
        }
    }

    /// Tasks of `driver` waiting for others.
    pub(super) fn waiting_of(&self, driver: DriverKey) -> u64 {
        if self.graph.parked.is_empty() {
            return 0;
        }
        let keys = self.graph.parked.keys();
        keys.filter(|&&k| self.tasks.get(k).is_some_and(|t| t.driver == driver)).count() as u64
    }
}

/// The outcome of a task that does not run because task `id` (named `name`) failed with
/// `failed`: the first failed ancestor is named, however far up it is.
pub(super) fn dependency_failed(id: DriverTaskId, name: String, failed: &Outcome) -> Outcome {
    match failed {
        Outcome::DependencyFailed { .. } => failed.clone(),
        other => {
            Outcome::DependencyFailed { task: id.get(), name, outcome: Box::new(other.clone()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waited-on task costs its window slot: 16 bytes, its one waiter inline.
    #[test]
    fn a_slot_of_waiters_stays_small() {
        assert!(std::mem::size_of::<Option<Waiters>>() <= 16);
    }

    #[test]
    fn the_window_follows_the_numbers_waited_on() {
        let mut w = ByNumber::default();
        let key = TaskKey::new(9);
        let n = |i: usize| DriverTaskId::new((CHUNK * i) as u64 + 5);
        w.add(n(10), key, PackedWait::pack(Wait::Input(0)));
        w.add(n(7), key, PackedWait::pack(Wait::After));
        w.add(n(7), key, PackedWait::pack(Wait::Input(1)));
        w.add(n(12), key, PackedWait::pack(Wait::AfterAny));
        assert_eq!((w.base, w.chunks.len()), (7 * CHUNK as u64, 6));
        assert_eq!(w.chunks.iter().flatten().count(), 3, "only chunks in use are allocated");
        assert!(w.take(n(8)).is_none(), "nobody waits on 8");
        let seven = w.take(n(7)).map(Waiters::into_vec);
        assert_eq!(seven.as_deref(), Some(&[(key, Wait::After), (key, Wait::Input(1))][..]));
        assert_eq!((w.base, w.chunks.len()), (10 * CHUNK as u64, 3), "the front trimmed");
        w.take(n(12));
        assert_eq!(w.chunks.len(), 1, "the back trimmed");
        assert!(w.take(DriverTaskId::new(3)).is_none() && w.take(n(99)).is_none());
        assert!(w.take(n(10)).is_some() && w.is_empty());
    }
}
