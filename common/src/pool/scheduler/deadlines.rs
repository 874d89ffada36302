//! The pool's clock: the nearest deadline its loop sleeps until (a task's timeout, a worker's
//! startup limit, a cancel's grace, a replacement's pause), and what happens when one passes.

use std::time::Instant;

use blitzen_protocol::JobId;
use tracing::{debug, warn};

use super::{KillReason, Scheduler, Worker};
use crate::pool::process::{kill_group, signal_group};

impl Scheduler {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let (startup, grace) = (self.config.startup_timeout, self.config.cancel_grace);
        let workers = self.workers.iter().flatten().filter_map(|w| w.deadline(startup, grace));
        workers.chain(self.respawn_at.iter().flatten().copied()).min()
    }

    pub(super) fn on_deadlines(&mut self) {
        let now = Instant::now();
        for slot in 0..self.respawn_at.len() {
            if self.respawn_at[slot].is_some_and(|at| at <= now) {
                self.respawn_at[slot] = None;
                if self.given_up.is_none() {
                    self.respawn(slot);
                }
            }
        }
        let (startup, grace) = (self.config.startup_timeout, self.config.cancel_grace);
        for w in self.workers.iter_mut().flatten() {
            if w.terminated.is_some_and(|at| at + grace <= now) {
                // SIGTERM did not end it within the grace.
                warn!(
                    pid = w.process.pid,
                    ?grace,
                    "cancelled task's worker outlived SIGTERM; killing it"
                );
                w.terminated = None;
                kill_group(w.process.pid);
                continue;
            }
            if w.deadline(startup, grace).is_some_and(|d| d <= now) {
                let reason = match (w.ready, w.inflight.front()) {
                    (true, Some(job)) => KillReason::Timeout {
                        job: job.id,
                        timeout: job.timeout.unwrap_or_default(),
                    },
                    _ => KillReason::StartupTimeout,
                };
                w.killed = Some(reason);
                kill_group(w.process.pid);
            }
        }
    }
}

/// Terminates a worker for the cancel of `job`, the one it runs: SIGTERM to its process group
/// now, SIGKILL once the grace has passed (see `on_deadlines`). A worker already being killed
/// (a timeout, a broken protocol) is left to that.
pub(super) fn terminate(w: &mut Worker, job: JobId) {
    if w.killed.is_some() {
        return;
    }
    debug!(task = %job, pid = w.process.pid, "running task cancelled; terminating its worker");
    w.killed = Some(KillReason::Cancel { job });
    w.terminated = Some(Instant::now());
    signal_group(w.process.pid, rustix::process::Signal::TERM);
}
