//! [`Task`], the server's record of one task, and [`TaskTable`]: every task the server holds,
//! in a slab.
//!
//! A million queued tasks must cost little memory: a slab of slots reused through a free list
//! holds each task once, without the hash table's spare buckets, in pages of [`PAGE`] slots so
//! that a growing table neither doubles its memory nor copies itself. A key is the slot's index and
//! the slot's generation, which changes whenever the slot is freed, so a key outlives its task
//! harmlessly: a late result for a task that was given up finds nothing.

use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use bytes::Bytes;

use super::KindId;

/// A driver the server holds tasks or results for: its session, across the connections that
/// take it over. Numbered by the core as drivers join (and as sessions are restored), never
/// reused; not a connection's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DriverKey(u64);

impl DriverKey {
    /// The key numbered `n`.
    pub(crate) const fn new(n: u64) -> Self {
        Self(n)
    }
}

impl std::fmt::Display for DriverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "d{}", self.0)
    }
}

impl std::fmt::Debug for DriverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DriverKey({})", self.0)
    }
}

/// One task the server holds, from its submission until it ends.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    /// The driver that submitted it; its result goes there.
    pub driver: DriverKey,
    /// The driver's id of the task, quoted in every report about it.
    pub id: DriverTaskId,
    /// Submission order across the server; a requeued task goes back before every task with a
    /// higher number (keys are reused, so they do not tell the order).
    pub seq: u64,
    /// What to run.
    pub kind: KindId,
    /// Its encoded arguments, never decoded here; shared with each assignment, not copied.
    pub args: Bytes,
    /// Its timeout in milliseconds, counted from its start on a worker (the driver's, or the
    /// server's default).
    pub timeout_ms: OptionalMs,
    /// Reruns the agent may make when it crashes its worker or times out.
    pub retries: u32,
    /// How long, in milliseconds, it may wait while no connected agent can run it (see
    /// `waiting`); 0: as long as it takes. A plain `u32` (not an `Option`) packs with the other
    /// 32-bit fields: every byte here is paid once per queued task.
    pub unrunnable_limit_ms: u32,
    /// The agent running it; none while queued. When set, that agent's `running` holds the
    /// task's key, and no driver queue does.
    pub agent: OptionalConn,
    /// Times an agent holding it vanished; at `max_attempts` the task ends `Lost`. A task
    /// with attempts is one whose late result an agent may recover.
    pub attempts: u32,
}

/// An `Option<u64>` of milliseconds in eight bytes instead of sixteen: every byte of a [`Task`]
/// is paid once per queued task. `u64::MAX` stands for none (a timeout of 584 million years is
/// no timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptionalMs(u64);

impl OptionalMs {
    pub(crate) const NONE: Self = Self(u64::MAX);

    pub(crate) fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }
}

impl From<Option<u64>> for OptionalMs {
    fn from(ms: Option<u64>) -> Self {
        ms.map_or(Self::NONE, Self)
    }
}

/// An `Option<ConnId>` in eight bytes: connection ids count up from 1, so `u64::MAX` is never
/// an agent's and stands for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptionalConn(u64);

impl OptionalConn {
    pub(crate) const NONE: Self = Self(u64::MAX);

    pub(crate) fn some(conn: ConnId) -> Self {
        debug_assert_ne!(conn.get(), u64::MAX, "not an agent's connection id");
        Self(conn.get())
    }

    pub(crate) fn get(self) -> Option<ConnId> {
        (self.0 != u64::MAX).then_some(ConnId::new(self.0))
    }
}

impl Task {
    /// Its unrunnable limit, if it has one.
    pub(crate) fn unrunnable_limit(&self) -> Option<std::time::Duration> {
        (self.unrunnable_limit_ms > 0)
            .then(|| std::time::Duration::from_millis(u64::from(self.unrunnable_limit_ms)))
    }
}

/// A key is the slot's generation in the high 32 bits and its index in the low.
fn key(index: usize, generation: u32) -> TaskKey {
    TaskKey::new((u64::from(generation) << 32) | index as u64)
}

/// Slots per page of a [`TaskTable`] (about 380 KiB).
const PAGE: usize = 4096;

/// Every task held, by key.
#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    /// Slot `i` (slot `i % PAGE` of page `i / PAGE`) holds the task whose key has index `i` and
    /// the slot's generation, if any.
    pages: Vec<Box<[Slot]>>,
    /// Slots handed out so far: those below this index are in use or on `free`.
    used: usize,
    /// Indices of empty slots, reused last-freed first.
    free: Vec<u32>,
    /// Slots holding a task.
    len: usize,
    /// Generation of new slots: above every generation used before the table was last emptied,
    /// so that keys from before cannot match tasks from after.
    fresh: u32,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    task: Option<Task>,
}

fn split(key: TaskKey) -> (usize, u32) {
    let key = key.get();
    ((key & u64::from(u32::MAX)) as usize, (key >> 32) as u32)
}

impl TaskTable {
    /// Stores `task` and returns its key.
    pub(crate) fn insert(&mut self, task: Task) -> TaskKey {
        self.len += 1;
        if let Some(index) = self.free.pop()
            && let Some(slot) = self.slot_mut(index as usize)
        {
            slot.task = Some(task);
            return key(index as usize, slot.generation);
        }
        let index = self.used;
        if index / PAGE == self.pages.len() {
            let empty = || Slot { generation: 0, task: None };
            self.pages.push(std::iter::repeat_with(empty).take(PAGE).collect());
        }
        self.used += 1;
        let fresh = self.fresh;
        if let Some(slot) = self.slot_mut(index) {
            *slot = Slot { generation: fresh, task: Some(task) };
        }
        key(index, fresh)
    }

    fn slot(&self, index: usize) -> Option<&Slot> {
        if index >= self.used {
            return None;
        }
        self.pages.get(index / PAGE)?.get(index % PAGE)
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        if index >= self.used {
            return None;
        }
        self.pages.get_mut(index / PAGE)?.get_mut(index % PAGE)
    }

    /// The slots handed out, in order of their index.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.pages.iter().flat_map(|page| page.iter()).take(self.used)
    }

    pub(crate) fn get(&self, key: TaskKey) -> Option<&Task> {
        let (index, generation) = split(key);
        let slot = self.slot(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.task.as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: TaskKey) -> Option<&mut Task> {
        let (index, generation) = split(key);
        let slot = self.slot_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.task.as_mut()
    }

    /// Takes the task out; its key is dead from now on.
    pub(crate) fn remove(&mut self, key: TaskKey) -> Option<Task> {
        let (index, generation) = split(key);
        let slot = self.slot_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let task = slot.task.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.len -= 1;
        if self.len == 0 {
            // Everything is done: give the memory of a burst back, but for the first page
            // (one task at a time would otherwise make and drop a page per task).
            let fresh = self.slots().map(|s| s.generation).max().unwrap_or(0);
            self.pages.truncate(1);
            *self = Self {
                pages: std::mem::take(&mut self.pages),
                fresh: fresh.wrapping_add(1),
                ..Self::default()
            };
        }
        Some(task)
    }

    /// Removes every task for which `keep` is false.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Task) -> bool) {
        let doomed: Vec<TaskKey> = (self.slots().enumerate())
            .filter(|(_, s)| s.task.as_ref().is_some_and(|t| !keep(t)))
            .map(|(i, s)| key(i, s.generation))
            .collect();
        for key in doomed {
            self.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every task held, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Task> {
        self.slots().filter_map(|slot| slot.task.as_ref())
    }

    /// Every task held with its key, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (TaskKey, &Task)> {
        (self.slots().enumerate())
            .filter_map(|(i, slot)| Some((key(i, slot.generation), slot.task.as_ref()?)))
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
impl std::ops::Index<&TaskKey> for TaskTable {
    type Output = Task;

    fn index(&self, key: &TaskKey) -> &Task {
        self.get(*key).expect("no task with this key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million queued tasks cost this many bytes each, before their arguments.
    #[test]
    fn a_task_record_stays_small() {
        assert!(std::mem::size_of::<Task>() <= 88, "{} bytes", std::mem::size_of::<Task>());
        assert!(std::mem::size_of::<Slot>() <= 96, "{} bytes", std::mem::size_of::<Slot>());
    }

    fn task(id: u64) -> Task {
        Task {
            driver: DriverKey::new(1),
            id: DriverTaskId::new(id),
            seq: id,
            kind: KindId(0),
            args: Bytes::new(),
            timeout_ms: OptionalMs::NONE,
            retries: 0,
            unrunnable_limit_ms: 0,
            agent: OptionalConn::NONE,
            attempts: 0,
        }
    }

    #[test]
    fn a_table_grows_page_by_page() {
        let mut t = TaskTable::default();
        let keys: Vec<TaskKey> = (0..PAGE as u64 * 2 + 3).map(|i| t.insert(task(i))).collect();
        assert_eq!((t.pages.len(), t.len(), t.iter().count()), (3, 2 * PAGE + 3, 2 * PAGE + 3));
        assert_eq!(t.get(keys[PAGE + 1]).map(|x| x.id.get()), Some(PAGE as u64 + 1));
        t.remove(keys[PAGE]);
        let again = t.insert(task(99));
        assert_eq!(
            (t.pages.len(), t.keys().find(|(k, _)| *k == again).map(|(_, x)| x.id.get())),
            (3, Some(99))
        );
        assert!(t.get(keys[PAGE]).is_none());
        let unused = key(2 * PAGE + 10, 0);
        assert!(t.get(unused).is_none(), "a slot of the last page not handed out is no task");
    }

    #[test]
    fn keys_of_removed_tasks_stay_dead_when_slots_are_reused() {
        let mut t = TaskTable::default();
        let a = t.insert(task(1));
        let b = t.insert(task(2));
        assert_eq!(t.remove(a).map(|x| x.id.get()), Some(1));
        let c = t.insert(task(3));
        assert_ne!(a, c, "the slot is reused with a new generation");
        assert!(t.get(a).is_none() && t.remove(a).is_none(), "the old key finds nothing");
        assert_eq!((t[&b].id.get(), t[&c].id.get(), t.len()), (2, 3, 2));
        t.retain(|x| x.id.get() != 2);
        assert!(t.get(b).is_none());
        assert_eq!(t.len(), 1);
        t.remove(c);
        assert!(t.is_empty() && t.pages.len() == 1 && t.used == 0, "an empty table keeps a page");
        let d = t.insert(task(4));
        for old in [a, b, c] {
            assert!(t.get(old).is_none(), "a key from before the table emptied matches {d}");
        }
    }
}
