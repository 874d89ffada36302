//! Waiting for results: the blocking [`fetch`](ResultTable::fetch) and
//! [`take_all`](ResultTable::take_all), which spin briefly and then sleep on the table's
//! condition variable, and their async twins, which leave a waker instead.

use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use blitzen_protocol::ids::DriverTaskId;

use super::slots::Slot;
use super::{ResultTable, TableState};
use crate::error::DispatchError;
use crate::progress::{Progress, REDRAW};
use crate::results::{Fetch, TaskId, TaskResult};

/// How long a waiter watches for results before sleeping ([`ResultTable::spin_briefly`]).
const SPIN: Duration = Duration::from_micros(250);

/// A waiter spins only when this few results are missing: then the next batch may well be the
/// last, and soon.
const SPIN_FOR_TASKS: usize = 4;

/// What an async wait for results keeps between polls (see [`ResultTable::poll_fetch`]).
#[derive(Debug, Default)]
pub(crate) struct AsyncWait {
    /// How many of the ids, from the first, are known not to be pending.
    ready: usize,
    /// Until when the wait keeps its task awake, once it waits for few results.
    spin_until: Option<Instant>,
}

impl ResultTable {
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
            if st.slots.get(ids[ready].seq).is_none() {
                // Fetched by another thread while this one waited.
                return Err(DispatchError::AlreadyFetched(ids[ready].seq));
            }
            if !spun && ids.len() - ready <= SPIN_FOR_TASKS {
                spun = true;
                st = self.spin_briefly(st);
                continue;
            }
            progress.update(|| {
                ids.iter().filter(|id| matches!(st.slots.get(id.seq), Some(Slot::Done(_)))).count()
            });
            #[cfg(test)]
            {
                st.sleepers += 1;
            }
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
                        #[cfg(test)]
                        {
                            st.sleepers -= 1;
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
            #[cfg(test)]
            {
                st.sleepers -= 1;
            }
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
}
