//! [`TaskTable`]: every task the server holds, in a slab.
//!
//! A million queued tasks must cost little memory: a slab of slots reused through a free list
//! holds each task once, without the hash table's spare buckets. A key is the slot's index and
//! the slot's generation, which changes whenever the slot is freed, so a key outlives its task
//! harmlessly: a late result for a task that was given up finds nothing.

use super::Task;

/// The server's key of a task: generation in the high 32 bits, slot index in the low.
pub(crate) type TaskKey = u64;

#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    slots: Vec<Slot>,
    /// Indices of empty slots, reused last-freed first.
    free: Vec<u32>,
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
    ((key & u64::from(u32::MAX)) as usize, (key >> 32) as u32)
}

impl TaskTable {
    /// Stores `task` and returns its key.
    pub(crate) fn insert(&mut self, task: Task) -> TaskKey {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.task = Some(task);
            return (u64::from(slot.generation) << 32) | u64::from(index);
        }
        let index = self.slots.len() as u64;
        self.slots.push(Slot { generation: self.fresh, task: Some(task) });
        (u64::from(self.fresh) << 32) | index
    }

    pub(crate) fn get(&self, key: TaskKey) -> Option<&Task> {
        let (index, generation) = split(key);
        let slot = self.slots.get(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.task.as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: TaskKey) -> Option<&mut Task> {
        let (index, generation) = split(key);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.task.as_mut()
    }

    /// Takes the task out; its key is dead from now on.
    pub(crate) fn remove(&mut self, key: TaskKey) -> Option<Task> {
        let (index, generation) = split(key);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let task = slot.task.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.len -= 1;
        if self.len == 0 {
            // Everything is done: give the memory of a burst back.
            let fresh = self.slots.iter().map(|s| s.generation).max().unwrap_or(0);
            *self = Self { fresh: fresh.wrapping_add(1), ..Self::default() };
        }
        Some(task)
    }

    /// Removes every task for which `keep` is false.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Task) -> bool) {
        let doomed: Vec<TaskKey> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.task.as_ref().is_some_and(|t| !keep(t)))
            .map(|(i, s)| (u64::from(s.generation) << 32) | i as u64)
            .collect();
        for key in doomed {
            self.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
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
    use bytes::Bytes;

    fn task(id: u64) -> Task {
        Task {
            driver: 1,
            id,
            seq: id,
            kind: 0,
            args: Bytes::new(),
            timeout_ms: None,
            retries: 0,
            agent: None,
            attempts: 0,
        }
    }

    #[test]
    fn keys_of_removed_tasks_stay_dead_when_slots_are_reused() {
        let mut t = TaskTable::default();
        let a = t.insert(task(1));
        let b = t.insert(task(2));
        assert_eq!(t.remove(a).map(|x| x.id), Some(1));
        let c = t.insert(task(3));
        assert_ne!(a, c, "the slot is reused with a new generation");
        assert!(t.get(a).is_none() && t.remove(a).is_none(), "the old key finds nothing");
        assert_eq!((t[&b].id, t[&c].id, t.len()), (2, 3, 2));
        t.retain(|x| x.id != 2);
        assert!(t.get(b).is_none());
        assert_eq!(t.len(), 1);
        t.remove(c);
        assert!(t.is_empty() && t.slots.is_empty(), "an empty table frees its memory");
        let d = t.insert(task(4));
        for old in [a, b, c] {
            assert!(t.get(old).is_none(), "a key from before the table emptied matches {d}");
        }
    }
}
