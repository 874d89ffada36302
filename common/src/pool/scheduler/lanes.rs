//! The pool's waiting jobs: a lane per priority, each first in, first out, and which lane
//! starts the next job — the highest effective priority, a lane's priority rising while it waits
//! (see `blitzen_protocol::priority`). While every waiting job has priority 0 — always, in a pool
//! whose tasks set none — they are a plain queue, in submission order, at its cost.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use blitzen_protocol::priority::effective;

use crate::pool::RunTask;

/// The jobs of one priority, and since when the lane has waited: since it last started a job,
/// or since it filled.
#[derive(Debug)]
struct Lane {
    jobs: VecDeque<RunTask>,
    since: Instant,
}

/// Waiting jobs, by priority.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    /// While every waiting job has priority 0 (a pool whose tasks set none): the jobs, as a
    /// plain queue. The first job of another priority moves them to `lanes`.
    plain: VecDeque<RunTask>,
    /// Otherwise the lanes that hold jobs, by priority.
    lanes: BTreeMap<i32, Lane>,
    /// The lane the next job comes from, as last chosen; forgotten whenever a job comes or goes.
    chosen: Cell<Option<i32>>,
}

impl Lanes {
    pub(super) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.lanes.is_empty()
    }

    /// The job that starts next.
    pub(super) fn front(&self) -> Option<&RunTask> {
        if self.lanes.is_empty() {
            return self.plain.front();
        }
        let priority = self.choose()?;
        self.lanes.get(&priority)?.jobs.front()
    }

    /// Takes the job that starts next.
    pub(super) fn pop_front(&mut self) -> Option<RunTask> {
        if self.lanes.is_empty() {
            return self.plain.pop_front();
        }
        let priority = self.choose()?;
        self.chosen.set(None);
        let others = self.lanes.len() > 1;
        let lane = self.lanes.get_mut(&priority)?;
        let job = lane.jobs.pop_front();
        if lane.jobs.is_empty() {
            self.lanes.remove(&priority);
        } else if others {
            lane.since = Instant::now();
        }
        job
    }

    /// Queues a job behind those of its priority.
    pub(super) fn push_back(&mut self, job: RunTask) {
        if job.priority == 0 && self.lanes.is_empty() {
            self.plain.push_back(job);
        } else {
            self.lane(job.priority).jobs.push_back(job);
        }
    }

    /// Puts a job back in front of those of its priority (a job a worker held and did not run).
    pub(super) fn push_front(&mut self, job: RunTask) {
        if job.priority == 0 && self.lanes.is_empty() {
            self.plain.push_front(job);
        } else {
            self.lane(job.priority).jobs.push_front(job);
        }
    }

    /// Keeps the jobs `keep` says to, in order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&RunTask) -> bool) {
        self.chosen.set(None);
        self.plain.retain(&mut keep);
        self.lanes.retain(|_, lane| {
            lane.jobs.retain(&mut keep);
            !lane.jobs.is_empty()
        });
    }

    /// Takes every job, highest priority first.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = RunTask> + use<> {
        self.chosen.set(None);
        let lanes = std::mem::take(&mut self.lanes).into_values().rev().flat_map(|lane| lane.jobs);
        lanes.chain(std::mem::take(&mut self.plain))
    }

    /// The lane of `priority`, made if it holds nothing yet. A lane that was the only one was
    /// served whenever a worker was free: it has not waited.
    fn lane(&mut self, priority: i32) -> &mut Lane {
        self.chosen.set(None);
        // The plain queue becomes the lane of priority 0, which has not waited.
        if !self.plain.is_empty() {
            let jobs = std::mem::take(&mut self.plain);
            self.lanes.insert(0, Lane { jobs, since: Instant::now() });
        }
        if self.lanes.len() == 1 && !self.lanes.contains_key(&priority) {
            let now = Instant::now();
            for lane in self.lanes.values_mut() {
                lane.since = now;
            }
        }
        (self.lanes.entry(priority))
            .or_insert_with(|| Lane { jobs: VecDeque::new(), since: Instant::now() })
    }

    /// The lane the next job comes from: the only one, or the one of the highest effective
    /// priority, the oldest job first among equals.
    fn choose(&self) -> Option<i32> {
        if let Some(priority) = self.chosen.get() {
            return Some(priority);
        }
        let chosen = if self.lanes.len() == 1 {
            *self.lanes.keys().next()?
        } else {
            let now = Instant::now();
            let highest = *self.lanes.keys().next_back()?;
            let rank = |(&priority, lane): (&i32, &Lane)| {
                let waited = now.saturating_duration_since(lane.since);
                (effective(priority, waited, highest), Reverse(lane.jobs.front().map(|j| j.id)))
            };
            *self.lanes.iter().max_by_key(|&entry| rank(entry))?.0
        };
        self.chosen.set(Some(chosen));
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use blitzen_protocol::JobId;
    use bytes::Bytes;

    use super::*;

    fn job(id: u64, priority: i32) -> RunTask {
        RunTask { priority, ..RunTask::new(JobId::new(id), "t", 1, Bytes::new()) }
    }

    fn order(lanes: &mut Lanes) -> Vec<u64> {
        std::iter::from_fn(|| lanes.pop_front()).map(|j| j.id.get()).collect()
    }

    #[test]
    fn higher_first_then_in_submission_order() {
        let mut lanes = Lanes::default();
        for (id, priority) in [(1, 0), (2, 0), (3, 10), (4, -1), (5, 10), (6, 0)] {
            lanes.push_back(job(id, priority));
        }
        lanes.push_front(job(0, 0));
        assert_eq!(lanes.front().map(|j| j.id.get()), Some(3));
        assert_eq!(order(&mut lanes), [3, 5, 0, 1, 2, 6, 4]);
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_lane_that_waits_rises_until_it_goes_first() {
        let mut lanes = Lanes::default();
        lanes.push_back(job(1, 0));
        lanes.push_back(job(2, 2));
        lanes.push_back(job(3, 2));
        // The low lane has waited three steps: it is level 2 now, and its job is older.
        let three_steps = blitzen_protocol::priority::AGE_STEP * 3;
        if let Some(lane) = lanes.lanes.get_mut(&0) {
            lane.since -= three_steps;
        }
        assert_eq!(order(&mut lanes), [1, 2, 3]);
    }

    #[test]
    fn retain_and_drain_keep_every_job_once() {
        let mut lanes = Lanes::default();
        for (id, priority) in [(1, 0), (2, 5), (3, 0), (4, 5)] {
            lanes.push_back(job(id, priority));
        }
        lanes.retain(|j| j.id.get() != 3);
        let drained: Vec<u64> = lanes.drain().map(|j| j.id.get()).collect();
        assert_eq!(drained, [2, 4, 1]);
        assert!(lanes.is_empty() && lanes.front().is_none());
    }
}
