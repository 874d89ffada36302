//! What running jobs hold of the pool's capacity: each worker's front job holds its request
//! (a plain job, one CPU) from when it is sent to an idle worker, or the job before it is
//! answered, until it is answered or its worker dies.

use blitzen_protocol::Request;

use super::{RunTask, Scheduler, Worker};

/// What a job without a request holds.
static PLAIN: Request = Request::PLAIN;

impl Scheduler {
    /// Whether `job` may start now on an idle worker.
    pub(super) fn fits(&self, job: &RunTask) -> bool {
        self.usage.fits(&self.capacity, job.request.as_deref().unwrap_or(&PLAIN))
    }

    /// The front job of `w` starts holding its share of the capacity.
    pub(super) fn hold(&mut self, slot: usize) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let Some(job) = w.inflight.front() else { return };
        if !w.holding {
            w.holding = true;
            let request = job.request.as_deref().unwrap_or(&PLAIN);
            self.usage.hold(&self.capacity, request);
        }
    }

    /// The front job of `w` gives back its share (it was answered, or the worker died).
    pub(super) fn release(&mut self, w: &mut Worker) {
        if let Some(job) = w.inflight.front()
            && std::mem::take(&mut w.holding)
        {
            let request = job.request.as_deref().unwrap_or(&PLAIN);
            self.usage.release(&self.capacity, request);
        }
    }
}
