//! Which queued job goes to which worker, and when: idle workers first, then short jobs
//! prefetched onto busy ones by the run times calls like them have taken.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use blitzen_protocol::devices::Devices;
use blitzen_protocol::frame::encode;
use blitzen_protocol::{Outcome, ToWorker};

use super::Scheduler;
use crate::pool::{Report, RunTask};

/// The running average run time of one task's calls, by group ([`RunTask::group`]).
#[derive(Debug, Default)]
pub(super) struct RunTimes {
    /// Group 0: every call of a task without groups.
    plain: Option<f64>,
    others: HashMap<u64, f64>,
}

impl RunTimes {
    pub(super) fn get(&self, group: u64) -> Option<f64> {
        if group == 0 { self.plain } else { self.others.get(&group).copied() }
    }

    pub(super) fn record(&mut self, group: u64, us: f64) {
        let blend = |old: Option<f64>| old.map_or(us, |avg| 0.8 * avg + 0.2 * us);
        if group == 0 {
            self.plain = Some(blend(self.plain));
        } else {
            let old = self.others.get(&group).copied();
            self.others.insert(group, blend(old));
        }
    }
}

/// The expected run time of `job`, if calls like it have run.
pub(super) fn expected_us(
    average: &HashMap<Cow<'static, str>, RunTimes>,
    job: &RunTask,
) -> Option<f64> {
    average.get(job.name.as_ref())?.get(job.group)
}

impl Scheduler {
    /// Assigns queued jobs: one to each idle worker first, then short plain jobs to busy
    /// workers up to the prefetch depth, then sends each worker its frames in one write.
    ///
    /// Jobs start in submission order: one whose request does not fit in what is free yet
    /// waits at the front, and nothing behind it starts (nor is prefetched) until it has — so a
    /// stream of small jobs cannot starve a large one. Small jobs still fill what a running large
    /// one leaves free.
    pub(super) fn dispatch(&mut self) {
        let now = Instant::now();
        let mut blocked = false;
        for slot in 0..self.workers.len() {
            let Some(next) = self.queue.front() else { break };
            if matches!(&self.workers[slot], Some(w) if w.accepts_work() && w.inflight.is_empty()) {
                if !self.fits(next) {
                    blocked = true;
                    break;
                }
                self.assign(slot, now);
                self.hold(slot);
            }
        }
        if self.config.prefetch > 0 && !blocked {
            let window_us = self.config.prefetch_window.as_micros() as f64;
            let mut progress = true;
            while progress && !self.queue.is_empty() {
                progress = false;
                for slot in 0..self.workers.len() {
                    let Some(next) = self.queue.front() else { break };
                    // A job with a request starts only on an idle worker, when it fits.
                    if next.request.is_some() {
                        break;
                    }
                    // Unknown tasks are never prefetched: they may be long.
                    let Some(expected) = expected_us(&self.average_us, next) else {
                        break;
                    };
                    let Some(w) = &self.workers[slot] else { continue };
                    let running_known = w.inflight.front().is_some_and(|j| {
                        expected_us(&self.average_us, j).is_some_and(|a| a < window_us)
                    });
                    if w.accepts_work()
                        && running_known
                        && w.inflight.len() <= self.config.prefetch
                        && w.queued_us + expected <= window_us
                    {
                        self.assign(slot, now);
                        progress = true;
                    }
                }
            }
        }
        for w in self.workers.iter_mut().flatten() {
            if !w.outbox.is_empty() {
                // A send error means the worker is gone; its supervisor reports that.
                let _ = w.process.frames.send(w.outbox.split().freeze());
            }
        }
    }

    fn assign(&mut self, slot: usize, now: Instant) {
        let Some(mut job) = self.queue.pop_front() else { return };
        let Some(w) = self.workers[slot].as_mut() else {
            self.queue.push_front(job);
            return;
        };
        // A job holding counted resources starts on an idle worker: it is given their devices.
        let counted = job.request.as_deref().filter(|r| !r.custom.is_empty());
        job.devices = match counted {
            Some(request) if w.inflight.is_empty() => Devices::new(self.devices.take(request)),
            _ => Devices::default(),
        };
        let frame = ToWorker::Run(&job);
        if let Err(e) = encode(&frame, &mut w.outbox) {
            self.devices.give_back(&job.devices);
            let outcome = Outcome::BadArguments { message: e.to_string() };
            self.finished.push(Report::unstarted(job.id, outcome));
            return;
        }
        if w.inflight.is_empty() {
            w.head_started = now;
            if job.timeout.is_some() && self.config.on_start.is_some() {
                self.started.push(job.id);
            }
        } else {
            w.queued_us += expected_us(&self.average_us, &job).unwrap_or(0.0);
        }
        w.inflight.push_back(job);
        w.sent += 1;
    }
}
