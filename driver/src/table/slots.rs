//! [`Slots`]: the table's task slots by number, 16 bytes per task.
//!
//! Task numbers are issued in sequence and mostly fetched in about that order, so slots live in a
//! deque indexed by `seq - base`: no hash table, no spare buckets, no table twice the size while
//! it grows. Fetched slots at the front are dropped. A slot left unfetched far behind the others
//! moves to a small map of its own, so one forgotten task does not keep a slot for every task
//! issued after it.

use std::collections::{HashMap, VecDeque};

use crate::results::TaskResult;

/// What the table knows of one task.
#[derive(Debug)]
pub(super) enum Slot {
    /// Waiting for its result; the number is the task's [`Kinds`] entry.
    Pending(u32),
    /// Boxed: most slots are pending at any time, and a result is four times the size.
    Done(Box<TaskResult>),
    /// Fetched (or never issued to this table): a hole in the deque.
    Fetched,
}

/// The slots of every task issued and not fetched.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// The number of the task in `window[0]`.
    base: u64,
    window: VecDeque<Slot>,
    /// Slots moved out of the front of `window` while still unfetched.
    behind: HashMap<u64, Slot>,
    /// Slots in `window` that are not `Fetched`.
    live_in_window: usize,
}

/// A window this many times larger than its live slots (and past `COMPACT_FROM`) moves its
/// front slot to `behind` until the front is dense again.
const SPARSE: usize = 8;
const COMPACT_FROM: usize = 4096;

impl Slots {
    pub(super) fn get(&self, seq: u64) -> Option<&Slot> {
        let slot = match seq.checked_sub(self.base) {
            Some(i) if (i as usize) < self.window.len() => &self.window[i as usize],
            _ => self.behind.get(&seq)?,
        };
        (!matches!(slot, Slot::Fetched)).then_some(slot)
    }

    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let slot = match seq.checked_sub(self.base) {
            Some(i) if (i as usize) < self.window.len() => &mut self.window[i as usize],
            _ => self.behind.get_mut(&seq)?,
        };
        (!matches!(slot, Slot::Fetched)).then_some(slot)
    }

    /// Stores `slot` for `seq` unless one is held; returns whether it was stored.
    pub(super) fn insert(&mut self, seq: u64, slot: Slot) -> bool {
        if self.get(seq).is_some() {
            return false;
        }
        if self.window.is_empty() {
            self.base = seq;
        }
        if seq < self.base {
            // Only an adopted task can be older than the window: it waits behind.
            self.behind.insert(seq, slot);
            return true;
        }
        let mut index = (seq - self.base) as usize;
        let gap = index.saturating_sub(self.window.len());
        if gap > COMPACT_FROM && gap > SPARSE * self.live_in_window {
            // Far ahead of a small window (adopted tasks of an old session): the window starts
            // again at `seq`, and what it held waits behind.
            let base = self.base;
            let held = std::mem::take(&mut self.window).into_iter().enumerate();
            for (i, slot) in held.filter(|(_, slot)| !matches!(slot, Slot::Fetched)) {
                self.behind.insert(base + i as u64, slot);
            }
            self.base = seq;
            self.live_in_window = 0;
            index = 0;
        }
        if index >= self.window.len() {
            self.window.resize_with(index + 1, || Slot::Fetched);
        }
        self.window[index] = slot;
        self.live_in_window += 1;
        true
    }

    /// Takes the slot of `seq` out.
    pub(super) fn remove(&mut self, seq: u64) -> Option<Slot> {
        let in_window = seq.checked_sub(self.base).filter(|&i| (i as usize) < self.window.len());
        let Some(index) = in_window else { return self.behind.remove(&seq) };
        let slot = std::mem::replace(&mut self.window[index as usize], Slot::Fetched);
        if matches!(slot, Slot::Fetched) {
            return None;
        }
        self.live_in_window -= 1;
        self.trim();
        Some(slot)
    }

    /// Drops fetched slots from the front, and moves live ones behind while the window is
    /// mostly holes.
    fn trim(&mut self) {
        loop {
            match self.window.front() {
                Some(Slot::Fetched) => {}
                Some(_)
                    if self.window.len() > COMPACT_FROM
                        && self.window.len() > SPARSE * self.live_in_window =>
                {
                    if let Some(slot) = self.window.pop_front() {
                        self.behind.insert(self.base, slot);
                        self.live_in_window -= 1;
                        self.base += 1;
                    }
                    continue;
                }
                _ => break,
            }
            self.window.pop_front();
            self.base += 1;
        }
        if self.window.is_empty() && self.window.capacity() > COMPACT_FROM {
            // A burst is over: give its memory back.
            self.window = VecDeque::new();
        }
    }

    /// Every slot held with its number, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Slot)> {
        let base = self.base;
        let window = (self.window.iter().enumerate()).map(move |(i, slot)| (base + i as u64, slot));
        (window.chain(self.behind.iter().map(|(&seq, slot)| (seq, slot))))
            .filter(|(_, slot)| !matches!(slot, Slot::Fetched))
    }

    /// Slots held (pending or done).
    pub(super) fn len(&self) -> usize {
        self.live_in_window + self.behind.len()
    }

    /// Takes every slot out, in no particular order.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u64, Slot)> + use<> {
        let base = self.base;
        let taken = std::mem::take(self);
        let window = (taken.window.into_iter().enumerate()).map(move |(i, s)| (base + i as u64, s));
        (window.chain(taken.behind)).filter(|(_, slot)| !matches!(slot, Slot::Fetched))
    }
}

/// The distinct (name, signature) pairs of pending tasks, so a pending slot holds a number.
#[derive(Debug, Default)]
pub(super) struct Kinds {
    list: Vec<(&'static str, &'static str)>,
    index: HashMap<(&'static str, &'static str), u32>,
}

impl Kinds {
    /// The number of a pair, added if new. The last pair asked for is found without hashing
    /// (a burst of one function's calls is the common case).
    pub(super) fn id(&mut self, task: &'static str, signature: &'static str) -> u32 {
        if let Some(&(t, s)) = self.list.last()
            && std::ptr::eq(t, task)
            && std::ptr::eq(s, signature)
        {
            return (self.list.len() - 1) as u32;
        }
        *self.index.entry((task, signature)).or_insert_with(|| {
            self.list.push((task, signature));
            (self.list.len() - 1) as u32
        })
    }

    /// The pair of a number `id` gave.
    pub(super) fn get(&self, id: u32) -> (&'static str, &'static str) {
        self.list.get(id as usize).copied().unwrap_or(("unknown", ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(slots: &Slots) -> Vec<u64> {
        let mut seqs: Vec<u64> = slots.iter().map(|(seq, _)| seq).collect();
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn a_slot_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn slots_are_found_by_number_and_fetched_ones_are_gone() {
        let mut slots = Slots::default();
        for seq in 1..=5 {
            assert!(slots.insert(seq, Slot::Pending(0)));
        }
        assert!(!slots.insert(3, Slot::Pending(0)), "held already");
        assert!(slots.remove(1).is_some());
        assert!(slots.remove(1).is_none(), "fetched twice");
        assert!(slots.remove(4).is_some());
        assert!(slots.get(4).is_none());
        assert!(slots.get(9).is_none());
        assert_eq!(seqs(&slots), [2, 3, 5]);
        assert_eq!(slots.len(), 3);
        // An older number (an adopted task) is kept too.
        assert!(slots.insert(0, Slot::Pending(0)));
        assert!(slots.get(0).is_some());
        assert_eq!(slots.drain().count(), 4);
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn one_unfetched_task_does_not_hold_a_slot_for_every_later_one() {
        let mut slots = Slots::default();
        let n = 100_000;
        for seq in 1..=n {
            slots.insert(seq, Slot::Pending(0));
        }
        for seq in 2..=n {
            slots.remove(seq);
        }
        assert_eq!(seqs(&slots), [1]);
        assert!(slots.window.len() <= COMPACT_FROM, "window of {}", slots.window.len());
        assert!(slots.get(1).is_some());
        assert!(slots.remove(1).is_some());
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn a_number_far_ahead_starts_the_window_again() {
        let mut slots = Slots::default();
        slots.insert(5, Slot::Pending(0));
        slots.insert(10_000_000, Slot::Pending(0));
        slots.insert(10_000_001, Slot::Pending(0));
        assert!(slots.window.len() <= 2, "window of {}", slots.window.len());
        assert_eq!(seqs(&slots), [5, 10_000_000, 10_000_001]);
        assert!(slots.remove(5).is_some());
        assert!(slots.remove(10_000_000).is_some());
        assert_eq!(seqs(&slots), [10_000_001]);
    }

    #[test]
    fn kinds_number_each_pair_once() {
        let mut kinds = Kinds::default();
        let a = kinds.id("a", "sig-a");
        let b = kinds.id("b", "sig-b");
        assert_eq!(kinds.id("a", "sig-a"), a);
        assert_eq!(kinds.id("b", "sig-b"), b);
        assert_ne!(a, b);
        assert_eq!(kinds.get(b), ("b", "sig-b"));
    }
}
