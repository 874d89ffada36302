//! Results sent to drivers and not yet acknowledged — and results of drivers that went away —
//! kept until acknowledged, within caps on their age and number.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use blitzen_protocol::Report;
use blitzen_protocol::ids::DriverTaskId;

use super::tasks::DriverKey;

/// Unacknowledged results by driver, with the caps of `--result-ttl` and `--max-results`.
#[derive(Debug)]
pub(super) struct ResultCache {
    /// By driver, then by the driver's task id: the result and when it arrived.
    by_driver: HashMap<DriverKey, HashMap<DriverTaskId, (Report<DriverTaskId>, Instant)>>,
    /// Arrival order, for eviction. Entries whose result was acknowledged meanwhile are skipped
    /// (and trimmed from the front every turn), so acknowledging costs no search.
    order: VecDeque<Arrival>,
    /// Results held in `by_driver`.
    count: usize,
    /// The age cap.
    ttl: Duration,
    /// The count cap.
    max: usize,
    /// Results evicted since the core last took them ([`ResultCache::take_evicted`]), for the
    /// data directory to forget too.
    evicted: Vec<(DriverKey, DriverTaskId)>,
}

/// One result's place in the arrival order.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    driver: DriverKey,
    id: DriverTaskId,
    /// When it arrived; an entry is stale when the result held under its id arrived at
    /// another time (it was acknowledged, and the id reported again).
    at: Instant,
}

impl ResultCache {
    pub(super) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            by_driver: HashMap::new(),
            order: VecDeque::new(),
            count: 0,
            ttl,
            max,
            evicted: Vec::new(),
        }
    }

    /// Keeps a result until acknowledged; returns how many older results the count cap evicted.
    pub(super) fn insert(&mut self, driver: DriverKey, report: Report<DriverTaskId>) -> usize {
        let now = Instant::now();
        let id = report.id;
        if self.by_driver.entry(driver).or_default().insert(id, (report, now)).is_none() {
            self.count += 1;
        }
        self.order.push_back(Arrival { driver, id, at: now });
        let mut evicted = 0;
        while self.count > self.max && self.evict_oldest() {
            evicted += 1;
        }
        evicted
    }

    /// The result held for `driver`'s task `id`, if any.
    pub(super) fn get(&self, driver: DriverKey, id: DriverTaskId) -> Option<&Report<DriverTaskId>> {
        self.by_driver.get(&driver)?.get(&id).map(|(report, _)| report)
    }

    /// Forgets acknowledged results.
    pub(super) fn ack(&mut self, driver: DriverKey, ids: &[DriverTaskId]) {
        if let Some(results) = self.by_driver.get_mut(&driver) {
            for id in ids {
                if results.remove(id).is_some() {
                    self.count -= 1;
                }
            }
        }
    }

    /// Forgets everything held for a driver.
    pub(super) fn forget(&mut self, driver: DriverKey) {
        if let Some(results) = self.by_driver.remove(&driver) {
            self.count -= results.len();
        }
    }

    /// Every result held for a driver, oldest first: what it is owed when it reconnects.
    pub(super) fn held(&self, driver: DriverKey) -> Vec<Report<DriverTaskId>> {
        let mut held: Vec<(&Report<DriverTaskId>, Instant)> =
            (self.by_driver.get(&driver).into_iter())
                .flat_map(|r| r.values().map(|(report, at)| (report, *at)))
                .collect();
        held.sort_by_key(|&(report, at)| (at, report.id));
        held.into_iter().map(|(report, _)| report.clone()).collect()
    }

    /// Whether anything is held for a driver.
    pub(super) fn holds(&self, driver: DriverKey) -> bool {
        self.by_driver.get(&driver).is_some_and(|r| !r.is_empty())
    }

    /// Results held.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Ids held for one driver.
    #[cfg(test)]
    pub(super) fn ids(&self, driver: DriverKey) -> Vec<u64> {
        let mut ids: Vec<u64> = (self.by_driver.get(&driver).into_iter())
            .flat_map(|r| r.keys().map(|id| id.get()))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Entries of the arrival order (stale ones included until trimmed).
    #[cfg(test)]
    pub(super) fn order_len(&self) -> usize {
        self.order.len()
    }

    /// When the oldest result reaches the age cap.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|a| a.at + self.ttl)
    }

    /// Drops results older than the age cap; returns how many.
    pub(super) fn expire(&mut self) -> usize {
        let Some(oldest_kept) = Instant::now().checked_sub(self.ttl) else { return 0 };
        self.trim();
        let mut evicted = 0;
        while self.order.front().is_some_and(|a| a.at <= oldest_kept) && self.evict_oldest() {
            evicted += 1;
        }
        evicted
    }

    /// Drops order entries of results acknowledged meanwhile from the front.
    pub(super) fn trim(&mut self) {
        while let Some(&Arrival { driver, id, at }) = self.order.front() {
            let held = self
                .by_driver
                .get(&driver)
                .and_then(|r| r.get(&id))
                .is_some_and(|&(_, stored)| stored == at);
            if held {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Removes the oldest held result; returns whether there was one.
    fn evict_oldest(&mut self) -> bool {
        self.trim();
        let Some(Arrival { driver, id, .. }) = self.order.pop_front() else { return false };
        if let Some(results) = self.by_driver.get_mut(&driver)
            && results.remove(&id).is_some()
        {
            self.count -= 1;
            self.evicted.push((driver, id));
        }
        true
    }

    /// The results evicted by the caps since the last call.
    pub(super) fn take_evicted(&mut self) -> Vec<(DriverKey, DriverTaskId)> {
        std::mem::take(&mut self.evicted)
    }
}
