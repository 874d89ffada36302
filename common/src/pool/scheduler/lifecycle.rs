//! The lifecycle of worker processes: starting them, what their exit means for the jobs they
//! held, replacing them, giving up on a crash loop, and the final shutdown.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::Instant;

use blitzen_protocol::{Captured, ExitReason, Finished, Outcome, SizeText};
use bytes::BytesMut;
use tracing::{debug, error, info, warn};

use super::{
    KillReason, REAP_LIMIT, RESPAWN_PAUSE, Scheduler, Worker, cancelled_queued, cancelled_running,
    read_capture,
};
use crate::capture;
use crate::error::{STDERR_TAIL_BYTES, STDERR_TAIL_LINES};
use crate::pool::process::{EventKind, WorkerEvent, WorkerId, kill_group, spawn_worker};
use crate::pool::{PoolError, Report};
use crate::worker::{OUT_OF_MEMORY_MESSAGE, RETIRED};
use blitzen_protocol::WorkerInfo;

/// Whether a worker that ran a job under a memory limit died of it: the Rust runtime aborts the
/// process when an allocation fails, after writing the line that says so.
fn ran_out_of_memory(exit: ExitReason, stderr: &Captured) -> bool {
    let tail = stderr.last_lines(STDERR_TAIL_LINES, STDERR_TAIL_BYTES);
    exit == ExitReason::Signal(rustix::process::Signal::ABORT.as_raw())
        && tail
            .lines()
            .any(|line| line.starts_with(OUT_OF_MEMORY_MESSAGE) && line.ends_with("failed"))
}

impl Scheduler {
    pub(super) fn on_exit(&mut self, slot: usize, exit: ExitReason, peak_rss: Option<u64>) {
        let Some(mut w) = self.workers[slot].take() else { return };
        let pid = w.process.pid;
        // What its streamed task wrote and its own reader had not taken yet.
        let mut salvaged = [0; 2];
        let files = [&w.process.stdout, &w.process.stderr];
        for ((pipe, file), lines) in w.process.pipes.iter().zip(files).zip(&mut salvaged) {
            match capture::salvage(pipe.as_fd(), file.as_fd()) {
                Ok(n) => *lines = n,
                Err(e) => {
                    debug!(pid, error = %e, "cannot take what a dead worker left in its pipe")
                }
            }
        }
        let mut stdout = read_capture(&w.process.stdout);
        let mut stderr = read_capture(&w.process.stderr);
        if !w.ready {
            self.publish_status();
            return self.on_start_failure(slot, pid, exit, w.killed, &stderr);
        }
        self.release(&mut w);
        let running = self.running_at_death(&w);
        // Finished, but their answers were still in the worker's batch and died with it: they
        // run again (nothing of them reached the pool).
        let mut finished_unsent: Vec<_> = w.inflight.drain(..running.unwrap_or(0)).collect();
        if !finished_unsent.is_empty() {
            warn!(
                pid,
                tasks = finished_unsent.len(),
                "tasks finished just before their worker died, their results not sent yet; \
                 they run again"
            );
        }
        if running.is_some()
            && let Some(job) = w.inflight.pop_front()
        {
            let outcome = match w.killed {
                Some(KillReason::Timeout { job: id, timeout }) if id == job.id => {
                    let after = format_args!("{}s", timeout.as_secs_f64());
                    warn!(task = %job.id, name = %job.name, pid, timeout = %after, "task timed out; worker killed");
                    Some(Outcome::TimedOut { timeout_ms: timeout.as_millis() as u64 })
                }
                Some(KillReason::Cancel { job: id }) if id == job.id => {
                    info!(task = %job.id, name = %job.name, pid, "cancelled task's worker is gone");
                    Some(cancelled_running())
                }
                // Killed for another job's timeout or cancel, which had just finished: this one
                // had barely started, and runs again elsewhere (unless it was cancelled too).
                Some(KillReason::Timeout { .. } | KillReason::Cancel { .. })
                    if w.cancelled.contains(&job.id) =>
                {
                    Some(cancelled_running())
                }
                Some(KillReason::Timeout { .. } | KillReason::Cancel { .. }) => None,
                Some(KillReason::Protocol) => Some(Outcome::Lost {
                    reason: "its worker broke the protocol and was killed".into(),
                }),
                Some(KillReason::Shutdown) => Some(Outcome::Cancelled {
                    reason: "the pool shut down while the task was running".into(),
                }),
                Some(KillReason::StartupTimeout) | None => {
                    match job.request.as_ref().and_then(|r| r.memory) {
                        Some(limit) if ran_out_of_memory(exit, &stderr) => {
                            warn!(task = %job.id, name = %job.name, pid, limit, "task went past its memory limit");
                            Some(Outcome::MemoryExceeded { limit, peak: peak_rss })
                        }
                        _ => {
                            let peak =
                                peak_rss.map_or("unknown".into(), |b| SizeText(b).to_string());
                            warn!(task = %job.id, name = %job.name, pid, %exit, peak_rss = %peak, "worker died running a task");
                            Some(Outcome::WorkerCrashed { exit, peak_rss })
                        }
                    }
                }
            };
            let retry =
                matches!(outcome, Some(Outcome::TimedOut { .. } | Outcome::WorkerCrashed { .. }))
                    && job.retries > 0;
            match outcome {
                Some(_) if retry => {
                    let mut job = job;
                    job.retries -= 1;
                    info!(task = %job.id, name = %job.name, left = job.retries, "running the task again, as asked");
                    w.inflight.push_front(job);
                }
                Some(outcome) => {
                    if job.stream {
                        (stdout.unstreamed, stderr.unstreamed) = (salvaged[0], salvaged[1]);
                    }
                    let elapsed_us = w.head_started.elapsed().as_micros() as u64;
                    let run = Finished { outcome, stdout, stderr, elapsed_us };
                    let devices = job.devices;
                    self.finished.push(Report {
                        id: job.id,
                        worker: Some(WorkerInfo { pid, host: None, devices }),
                        run,
                    });
                }
                None => w.inflight.push_front(job),
            }
        } else if exit == ExitReason::Code(RETIRED) {
            info!(pid, "worker retired after its task went past its memory limit; replacing it");
        } else if w.killed.is_none() {
            warn!(pid, %exit, held = w.inflight.len(), "worker died between tasks");
        }
        // The finished ones go back first, in order, then the rest.
        for job in finished_unsent.drain(..).rev() {
            w.inflight.push_front(job);
        }
        // Jobs it held but had not started go back to the front, in order; cancelled ones end.
        while let Some(job) = w.inflight.pop_back() {
            if w.cancelled.contains(&job.id) {
                self.finished.push(Report::unstarted(job.id, cancelled_queued()));
            } else {
                self.queue.push_front(job);
            }
        }
        self.publish_status();
        if self.given_up.is_none() && w.killed != Some(KillReason::Shutdown) {
            self.status.update(|s| s.replacements += 1);
            self.respawn(slot);
        }
    }

    /// Which of a dead worker's jobs it was running, by its start counter; `None` if it had
    /// not started any of them (it died between tasks). Without a readable counter the front
    /// one is blamed, as the pool saw it.
    fn running_at_death(&self, w: &Worker) -> Option<usize> {
        if w.inflight.is_empty() {
            return None;
        }
        let answered = w.sent - w.inflight.len() as u64;
        match w.process.starts.started() {
            Ok(started) if started <= answered => None,
            Ok(started) if started - answered <= w.inflight.len() as u64 => {
                Some((started - answered - 1) as usize)
            }
            Ok(started) => {
                error!(
                    pid = w.process.pid,
                    started,
                    sent = w.sent,
                    "worker counted more tasks started than it was sent"
                );
                Some(0)
            }
            Err(e) => {
                error!(pid = w.process.pid, error = %e, "cannot read a dead worker's start counter");
                Some(0)
            }
        }
    }

    pub(super) fn on_start_failure(
        &mut self,
        slot: usize,
        pid: u32,
        exit: ExitReason,
        killed: Option<KillReason>,
        stderr: &Captured,
    ) {
        let stderr = stderr.last_lines(STDERR_TAIL_LINES, STDERR_TAIL_BYTES);
        let failure = match killed {
            Some(KillReason::StartupTimeout) => {
                PoolError::StartupTimeout { pid, timeout: self.config.startup_timeout, stderr }
            }
            _ => PoolError::WorkerExited { pid, exit, stderr },
        };
        if let Some(startup) = self.startup.take() {
            // The first workers must all start: report the failure to `Pool::start`.
            error!(%failure, "worker failed to start");
            self.give_up(failure.to_string());
            let _ = startup.send(Err(failure));
            return;
        }
        if killed == Some(KillReason::Shutdown) || self.given_up.is_some() {
            return;
        }
        self.start_failures += 1;
        if self.start_failures >= self.config.max_start_failures {
            let reason = format!(
                "{} replacement workers in a row failed to start; the last: {failure}",
                self.start_failures
            );
            error!(%reason, "giving up on the pool");
            self.give_up(reason);
        } else {
            warn!(%failure, attempt = self.start_failures, "replacement worker failed to start; trying again");
            self.respawn(slot);
        }
    }

    // ----- workers -----

    pub(super) fn spawn(&mut self, slot: usize) -> Result<(), PoolError> {
        let id = WorkerId { slot, generation: self.next_generation };
        self.next_generation += 1;
        let process = spawn_worker(
            &self.config.command,
            id,
            self.events_tx.clone(),
            self.config.on_output.clone(),
        )
        .map_err(|source| PoolError::Spawn {
            program: self.config.command.program.display().to_string(),
            source,
        })?;
        self.workers[slot] = Some(Worker {
            id,
            process,
            ready: false,
            spawned_at: Instant::now(),
            inflight: VecDeque::new(),
            sent: 0,
            queued_us: 0.0,
            head_started: Instant::now(),
            killed: None,
            terminated: None,
            cancelled: Vec::new(),
            outbox: BytesMut::new(),
            holding: false,
        });
        Ok(())
    }

    pub(super) fn respawn(&mut self, slot: usize) {
        if let Err(e) = self.spawn(slot) {
            self.start_failures += 1;
            if self.start_failures >= self.config.max_start_failures {
                error!(error = %e, "cannot start a replacement worker; giving up");
                self.give_up(e.to_string());
            } else {
                // The other workers carry on; try again after a pause that grows each time.
                let pause = RESPAWN_PAUSE * self.start_failures;
                error!(error = %e, pause = %format_args!("{}s", pause.as_secs_f64()), "cannot start a replacement worker; will retry");
                self.respawn_at[slot] = Some(Instant::now() + pause);
            }
        }
    }

    /// Ends every queued and running job as `Lost`, kills the workers, refuses new jobs.
    pub(super) fn give_up(&mut self, reason: String) {
        self.given_up = Some(reason.clone());
        for job in self.queue.drain() {
            let outcome = Outcome::Lost { reason: reason.clone() };
            self.finished.push(Report::unstarted(job.id, outcome));
        }
        for w in self.workers.iter_mut().flatten() {
            for job in w.inflight.drain(..) {
                let outcome = Outcome::Lost { reason: reason.clone() };
                self.finished.push(Report::unstarted(job.id, outcome));
            }
        }
        self.kill_all(KillReason::Shutdown);
        self.status.update(|s| s.stopped = Some(reason));
    }

    pub(super) fn kill_all(&mut self, reason: KillReason) {
        for w in self.workers.iter_mut().flatten() {
            w.killed = Some(reason);
            kill_group(w.process.pid);
        }
    }

    pub(super) fn publish_status(&self) {
        let pids: Vec<u32> = self
            .workers
            .iter()
            .flatten()
            .filter(|w| w.ready && w.killed.is_none())
            .map(|w| w.process.pid)
            .collect();
        self.status.update(|s| s.ready_pids = pids);
    }

    /// Cancels everything, kills every worker and waits (bounded) until all are reaped.
    pub(super) async fn shut_down(&mut self) {
        let reason = "the pool shut down before the task started";
        for job in self.queue.drain() {
            let outcome = Outcome::Cancelled { reason: reason.into() };
            self.finished.push(Report::unstarted(job.id, outcome));
        }
        for w in self.workers.iter_mut().flatten() {
            for job in w.inflight.drain(..) {
                let outcome = Outcome::Cancelled {
                    reason: "the pool shut down while the task was running".into(),
                };
                self.finished.push(Report::unstarted(job.id, outcome));
            }
        }
        if let Some(startup) = self.startup.take() {
            let _ = startup.send(Err(PoolError::Stopped));
        }
        self.kill_all(KillReason::Shutdown);
        self.deliver();
        let reap_by = tokio::time::Instant::now() + REAP_LIMIT;
        while self.workers.iter().any(Option::is_some) {
            match tokio::time::timeout_at(reap_by, self.events.recv()).await {
                Ok(Some(WorkerEvent { worker, kind: EventKind::Exited { .. } })) => {
                    if matches!(&self.workers[worker.slot], Some(w) if w.id == worker) {
                        self.workers[worker.slot] = None;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    warn!("some workers were not reaped in time");
                    break;
                }
            }
        }
        self.status.update(|s| {
            s.ready_pids.clear();
            s.stopped.get_or_insert_with(|| "shut down".into());
        });
        debug!("pool stopped");
    }
}
