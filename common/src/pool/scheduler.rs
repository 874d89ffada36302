//! The pool's single owner: the job queue, the workers and what each holds.
//!
//! One task runs [`Scheduler::run`]; nothing else touches this state, so there is no lock. Each
//! turn of its loop waits for one thing (a worker event, a command, the nearest deadline), then
//! takes everything else already waiting without blocking, assigns work, and hands finished jobs
//! to the sink in one batch.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_protocol::frame::encode;
use blitzen_protocol::{
    Captured, ExitReason, Outcome, RunTaskRef, TaskDone, ToWorkerRef, WORKER_PROTOCOL_VERSION,
};
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::process::{EventKind, Spawned, WorkerEvent, WorkerId, kill_group, spawn_worker};
use super::{Command, Job, JobResult, PoolConfig, PoolError, PoolStatus, ResultSink};
use crate::capture::{self, CAPTURE_LIMIT};
use crate::error::{STDERR_TAIL_BYTES, STDERR_TAIL_LINES};

/// Commands taken per loop turn before assigning work, so a flood of submissions cannot keep
/// idle workers waiting.
const COMMANDS_PER_TURN: usize = 4096;

/// The pause before retrying a worker that could not be created, times the failures so far.
const RESPAWN_PAUSE: Duration = Duration::from_millis(500);

/// How long shutdown waits for killed workers to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Why the scheduler killed a worker; decides what its running job is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    /// This job ran past its timeout.
    Timeout { job: u64, timeout: Duration },
    /// The worker did not announce itself in time.
    StartupTimeout,
    /// The worker broke the protocol.
    Protocol,
    /// The pool is shutting down.
    Shutdown,
}

/// One live worker process.
#[derive(Debug)]
struct Worker {
    id: WorkerId,
    process: Spawned,
    /// Set when the worker has sent `Ready`; only ready workers get jobs.
    ready: bool,
    spawned_at: Instant,
    /// Jobs sent, in order; the front one is running, the others wait in the worker.
    inflight: VecDeque<Job>,
    /// Sum of the expected run times (µs) of the jobs in `inflight` after the first, which
    /// decides whether more may be prefetched.
    queued_us: f64,
    /// When the front job started, as far as the pool can tell: when it was sent to an idle
    /// worker, or when the answer before it arrived. Never earlier than the real start, so a
    /// timeout is never charged for time spent waiting.
    head_started: Instant,
    /// Set once the scheduler has killed the worker; its `Exited` event is still to come.
    killed: Option<KillReason>,
    /// Frames encoded this turn, sent in one write.
    outbox: BytesMut,
}

impl Worker {
    fn accepts_work(&self) -> bool {
        self.ready && self.killed.is_none()
    }

    fn deadline(&self, startup_timeout: Duration) -> Option<Instant> {
        if self.killed.is_some() {
            None
        } else if !self.ready {
            Some(self.spawned_at + startup_timeout)
        } else {
            self.inflight.front()?.timeout.map(|t| self.head_started + t)
        }
    }
}

pub(super) struct Scheduler {
    config: PoolConfig,
    /// Jobs waiting for a worker, in submission order (requeued jobs go back to the front).
    queue: VecDeque<Job>,
    /// By slot; `None` while a slot has no process (after the pool gave up).
    workers: Vec<Option<Worker>>,
    /// Given to each supervisor; kept here so `events` never closes.
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    sink: ResultSink,
    /// Results gathered this turn, delivered together.
    finished: Vec<JobResult>,
    status: Arc<PoolStatus>,
    /// Running average of run time per task name, in microseconds; decides prefetching.
    average_us: HashMap<Cow<'static, str>, f64>,
    /// Present until every first-generation worker is ready; reports start-up success or the
    /// first failure to `Pool::start`.
    startup: Option<oneshot::Sender<Result<(), PoolError>>>,
    /// Replacement workers that failed to start in a row.
    start_failures: u32,
    /// By slot: when to try again to start a worker that could not be created (fork failed).
    respawn_at: Vec<Option<Instant>>,
    /// Set when the pool has given up; every job then ends `Lost` with this reason.
    given_up: Option<String>,
    next_generation: u64,
}

impl Scheduler {
    /// Spawns the first workers; `run` then drives everything.
    pub(super) fn start(
        config: PoolConfig,
        sink: ResultSink,
        status: Arc<PoolStatus>,
        commands: mpsc::UnboundedReceiver<Command>,
        startup: oneshot::Sender<Result<(), PoolError>>,
    ) -> Result<Self, PoolError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let config_workers = config.workers;
        let mut scheduler = Scheduler {
            workers: (0..config.workers).map(|_| None).collect(),
            config,
            queue: VecDeque::new(),
            events_tx,
            events,
            commands,
            sink,
            finished: Vec::new(),
            status,
            average_us: HashMap::new(),
            startup: Some(startup),
            start_failures: 0,
            respawn_at: vec![None; config_workers],
            given_up: None,
            next_generation: 0,
        };
        for slot in 0..scheduler.workers.len() {
            if let Err(e) = scheduler.spawn(slot) {
                scheduler.kill_all(KillReason::Shutdown);
                return Err(e);
            }
        }
        Ok(scheduler)
    }

    pub(super) async fn run(mut self) {
        let mut ack = None;
        'serve: loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                Some(event) = self.events.recv() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Submit(job)) => self.enqueue(job),
                    Some(Command::Shutdown(a)) => { ack = Some(a); break 'serve; }
                    None => break 'serve,
                },
                _ = sleep_until(deadline), if deadline.is_some() => self.on_deadlines(),
            }
            while let Ok(event) = self.events.try_recv() {
                self.on_event(event);
            }
            for _ in 0..COMMANDS_PER_TURN {
                match self.commands.try_recv() {
                    Ok(Command::Submit(job)) => self.enqueue(job),
                    Ok(Command::Shutdown(a)) => {
                        ack = Some(a);
                        break 'serve;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'serve,
                }
            }
            self.dispatch();
            self.deliver();
        }
        self.shut_down().await;
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    // ----- jobs in -----

    fn enqueue(&mut self, job: Job) {
        match &self.given_up {
            Some(reason) => {
                let outcome = Outcome::Lost { reason: reason.clone() };
                self.finished.push(JobResult::unstarted(job.id, outcome));
            }
            None => self.queue.push_back(job),
        }
    }

    /// Assigns queued jobs: one to each idle worker first, then short jobs to busy workers up to
    /// the prefetch depth, then sends each worker its frames in one write.
    fn dispatch(&mut self) {
        let now = Instant::now();
        for slot in 0..self.workers.len() {
            if self.queue.is_empty() {
                break;
            }
            if matches!(&self.workers[slot], Some(w) if w.accepts_work() && w.inflight.is_empty()) {
                self.assign(slot, now);
            }
        }
        if self.config.prefetch > 0 {
            let window_us = self.config.prefetch_window.as_micros() as f64;
            let mut progress = true;
            while progress && !self.queue.is_empty() {
                progress = false;
                for slot in 0..self.workers.len() {
                    let Some(next) = self.queue.front() else { break };
                    // Unknown tasks are never prefetched: they may be long.
                    let Some(expected) = self.average_us.get(next.name.as_ref()).copied() else {
                        break;
                    };
                    let Some(w) = &self.workers[slot] else { continue };
                    let running_known = w.inflight.front().is_some_and(|j| {
                        self.average_us.get(j.name.as_ref()).is_some_and(|&a| a < window_us)
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
        let Some(job) = self.queue.pop_front() else { return };
        let Some(w) = self.workers[slot].as_mut() else {
            self.queue.push_front(job);
            return;
        };
        let frame = ToWorkerRef::Run(RunTaskRef {
            id: job.id,
            name: &job.name,
            fingerprint: job.fingerprint,
            args: &job.args,
        });
        if let Err(e) = encode(&frame, &mut w.outbox) {
            let outcome = Outcome::BadArguments { message: e.to_string() };
            self.finished.push(JobResult::unstarted(job.id, outcome));
            return;
        }
        if w.inflight.is_empty() {
            w.head_started = now;
        } else {
            w.queued_us += self.average_us.get(job.name.as_ref()).copied().unwrap_or(0.0);
        }
        w.inflight.push_back(job);
    }

    fn deliver(&mut self) {
        if !self.finished.is_empty() {
            (self.sink)(std::mem::take(&mut self.finished));
        }
    }

    // ----- events from workers -----

    fn on_event(&mut self, event: WorkerEvent) {
        let slot = event.worker.slot;
        // Events of a worker that was already replaced are stale.
        if !matches!(&self.workers[slot], Some(w) if w.id == event.worker) {
            return;
        }
        match event.kind {
            EventKind::Ready(ready) => self.on_ready(slot, ready.pid, ready.version),
            EventKind::Done(batch) => self.on_done(slot, batch),
            EventKind::Garbage(problem) => {
                if let Some(w) = self.workers[slot].as_mut() {
                    error!(pid = w.process.pid, %problem, "worker broke the protocol; killing it");
                    w.killed.get_or_insert(KillReason::Protocol);
                    kill_group(w.process.pid);
                }
            }
            EventKind::Exited(exit) => self.on_exit(slot, exit),
        }
    }

    fn on_ready(&mut self, slot: usize, pid: u32, version: u32) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        if version != WORKER_PROTOCOL_VERSION {
            error!(
                pid,
                version,
                expected = WORKER_PROTOCOL_VERSION,
                "worker speaks another protocol"
            );
            w.killed = Some(KillReason::Protocol);
            kill_group(w.process.pid);
            return;
        }
        w.ready = true;
        self.start_failures = 0;
        debug!(pid, slot, "worker ready");
        self.publish_status();
        let all_ready = self.workers.iter().all(|w| matches!(w, Some(w) if w.ready));
        if all_ready && let Some(startup) = self.startup.take() {
            let _ = startup.send(Ok(()));
        }
    }

    fn on_done(&mut self, slot: usize, batch: Vec<TaskDone>) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let pid = w.process.pid;
        for done in batch {
            match w.inflight.front() {
                Some(job) if job.id == done.id => {}
                other => {
                    let expected = other.map(|j| j.id);
                    error!(
                        pid,
                        answered = done.id,
                        ?expected,
                        "worker answered out of order; killing it"
                    );
                    w.killed.get_or_insert(KillReason::Protocol);
                    kill_group(pid);
                    return;
                }
            }
            let Some(job) = w.inflight.pop_front() else { return };
            // The next job starts now: it no longer counts as queued.
            if let Some(next) = w.inflight.front() {
                let expected = self.average_us.get(next.name.as_ref()).copied().unwrap_or(0.0);
                w.queued_us = (w.queued_us - expected).max(0.0);
            } else {
                w.queued_us = 0.0;
            }
            let us = done.elapsed_us as f64;
            match self.average_us.get_mut(job.name.as_ref()) {
                Some(avg) => *avg = 0.8 * *avg + 0.2 * us,
                None => {
                    self.average_us.insert(job.name.clone(), us);
                }
            }
            debug!(task = job.id, name = %job.name, pid, us = done.elapsed_us, "task finished");
            self.finished.push(JobResult {
                id: done.id,
                worker: Some(pid),
                outcome: done.outcome,
                stdout: done.stdout,
                stderr: done.stderr,
                elapsed: Duration::from_micros(done.elapsed_us),
            });
        }
        if !w.inflight.is_empty() {
            w.head_started = Instant::now();
        }
    }

    fn on_exit(&mut self, slot: usize, exit: ExitReason) {
        let Some(mut w) = self.workers[slot].take() else { return };
        let pid = w.process.pid;
        let stdout = read_capture(&w.process.stdout);
        let stderr = read_capture(&w.process.stderr);
        if !w.ready {
            self.publish_status();
            return self.on_start_failure(slot, pid, exit, w.killed, &stderr);
        }
        if let Some(job) = w.inflight.pop_front() {
            let outcome = match w.killed {
                Some(KillReason::Timeout { job: id, timeout }) if id == job.id => {
                    warn!(task = job.id, name = %job.name, pid, ?timeout, "task timed out; worker killed");
                    Some(Outcome::TimedOut { timeout_ms: timeout.as_millis() as u64 })
                }
                // Killed for another job's timeout that had just finished: this one had barely
                // started, and runs again elsewhere.
                Some(KillReason::Timeout { .. }) => None,
                Some(KillReason::Protocol) => Some(Outcome::Lost {
                    reason: "its worker broke the protocol and was killed".into(),
                }),
                Some(KillReason::Shutdown) => Some(Outcome::Cancelled {
                    reason: "the pool shut down while the task was running".into(),
                }),
                Some(KillReason::StartupTimeout) | None => {
                    warn!(task = job.id, name = %job.name, pid, %exit, "worker died running a task");
                    Some(Outcome::WorkerCrashed { exit })
                }
            };
            match outcome {
                Some(outcome) => self.finished.push(JobResult {
                    id: job.id,
                    worker: Some(pid),
                    outcome,
                    stdout,
                    stderr,
                    elapsed: w.head_started.elapsed(),
                }),
                None => w.inflight.push_front(job),
            }
        } else if w.killed.is_none() {
            warn!(pid, %exit, "idle worker died");
        }
        // Jobs it held but had not started go back to the front, in order.
        while let Some(job) = w.inflight.pop_back() {
            self.queue.push_front(job);
        }
        self.publish_status();
        if self.given_up.is_none() && w.killed != Some(KillReason::Shutdown) {
            self.status.update(|s| s.replacements += 1);
            self.respawn(slot);
        }
    }

    fn on_start_failure(
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

    // ----- time -----

    fn next_deadline(&self) -> Option<Instant> {
        let startup = self.config.startup_timeout;
        let workers = self.workers.iter().flatten().filter_map(|w| w.deadline(startup));
        workers.chain(self.respawn_at.iter().flatten().copied()).min()
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        for slot in 0..self.respawn_at.len() {
            if self.respawn_at[slot].is_some_and(|at| at <= now) {
                self.respawn_at[slot] = None;
                if self.given_up.is_none() {
                    self.respawn(slot);
                }
            }
        }
        let startup = self.config.startup_timeout;
        for w in self.workers.iter_mut().flatten() {
            if w.deadline(startup).is_some_and(|d| d <= now) {
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

    // ----- workers -----

    fn spawn(&mut self, slot: usize) -> Result<(), PoolError> {
        let id = WorkerId { slot, generation: self.next_generation };
        self.next_generation += 1;
        let process =
            spawn_worker(&self.config.program, id, self.events_tx.clone()).map_err(|source| {
                PoolError::Spawn { program: self.config.program.display().to_string(), source }
            })?;
        self.workers[slot] = Some(Worker {
            id,
            process,
            ready: false,
            spawned_at: Instant::now(),
            inflight: VecDeque::new(),
            queued_us: 0.0,
            head_started: Instant::now(),
            killed: None,
            outbox: BytesMut::new(),
        });
        Ok(())
    }

    fn respawn(&mut self, slot: usize) {
        if let Err(e) = self.spawn(slot) {
            self.start_failures += 1;
            if self.start_failures >= self.config.max_start_failures {
                error!(error = %e, "cannot start a replacement worker; giving up");
                self.give_up(e.to_string());
            } else {
                // The other workers carry on; try again after a pause that grows each time.
                let pause = RESPAWN_PAUSE * self.start_failures;
                error!(error = %e, ?pause, "cannot start a replacement worker; will retry");
                self.respawn_at[slot] = Some(Instant::now() + pause);
            }
        }
    }

    /// Ends every queued and running job as `Lost`, kills the workers, refuses new jobs.
    fn give_up(&mut self, reason: String) {
        self.given_up = Some(reason.clone());
        for job in self.queue.drain(..) {
            let outcome = Outcome::Lost { reason: reason.clone() };
            self.finished.push(JobResult::unstarted(job.id, outcome));
        }
        for w in self.workers.iter_mut().flatten() {
            for job in w.inflight.drain(..) {
                let outcome = Outcome::Lost { reason: reason.clone() };
                self.finished.push(JobResult::unstarted(job.id, outcome));
            }
        }
        self.kill_all(KillReason::Shutdown);
        self.status.update(|s| s.stopped = Some(reason));
    }

    fn kill_all(&mut self, reason: KillReason) {
        for w in self.workers.iter_mut().flatten() {
            w.killed = Some(reason);
            kill_group(w.process.pid);
        }
    }

    fn publish_status(&self) {
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
    async fn shut_down(&mut self) {
        let reason = "the pool shut down before the task started";
        for job in self.queue.drain(..) {
            let outcome = Outcome::Cancelled { reason: reason.into() };
            self.finished.push(JobResult::unstarted(job.id, outcome));
        }
        for w in self.workers.iter_mut().flatten() {
            for job in w.inflight.drain(..) {
                let outcome = Outcome::Cancelled {
                    reason: "the pool shut down while the task was running".into(),
                };
                self.finished.push(JobResult::unstarted(job.id, outcome));
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
                Ok(Some(WorkerEvent { worker, kind: EventKind::Exited(_) })) => {
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
        info!("pool stopped");
    }
}

fn read_capture(fd: &OwnedFd) -> Captured {
    capture::snapshot(fd.as_fd(), CAPTURE_LIMIT).unwrap_or_default()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
