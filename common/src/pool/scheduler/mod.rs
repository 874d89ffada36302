//! The pool's single owner: the job queue, the workers and what each holds.
//!
//! One task runs [`Scheduler::run`]; nothing else touches this state, so there is no lock. Each
//! turn of its loop waits for one thing (a worker event, a command, the nearest deadline), then
//! takes everything else already waiting without blocking, assigns work, and hands finished jobs
//! to the sink in one batch.
//!
//! This file holds the state and the flow of jobs (queue, dispatch, answers);
//! `dispatch` which queued job goes to which worker, and when (prefetching by run times);
//! `lanes` the queue of waiting jobs, by priority; `deadlines` the timeouts and pauses;
//! `lifecycle` holds what happens to worker processes (start, exit, replacement, shutdown);
//! `holding` what running jobs hold of the pool's capacity.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_protocol::devices::devices_of;
use blitzen_protocol::{
    Capacity, Captured, JobId, Outcome, Report, Usage, WORKER_PROTOCOL_VERSION, WorkerInfo,
};
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use super::process::{EventKind, Spawned, WorkerEvent, WorkerId, kill_group};
use super::{Command, PoolConfig, PoolError, PoolStatus, ResultSink, RunTask, WorkerView};
use crate::capture::{self, CAPTURE_LIMIT};

mod deadlines;
mod dispatch;
mod lanes;
use lanes::Lanes;
mod holding;
mod lifecycle;

use deadlines::terminate;
use dispatch::{RunTimes, expected_us};

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
    Timeout { job: JobId, timeout: Duration },
    /// This job was cancelled while it ran: the group had SIGTERM, SIGKILL follows the grace.
    Cancel { job: JobId },
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
    /// Jobs sent and not answered, in order. The front one is running as far as the pool can
    /// tell; after a death the worker's start counter tells which one really was (the ones
    /// before it had finished, their answers still in the worker's batch).
    inflight: VecDeque<RunTask>,
    /// Jobs ever sent to it: with `inflight` and its start counter, which one it was running.
    sent: u64,
    /// Sum of the expected run times (µs) of the jobs in `inflight` after the first, which
    /// decides whether more may be prefetched.
    queued_us: f64,
    /// When the front job started, as far as the pool can tell: when it was sent to an idle
    /// worker, or when the answer before it arrived. Never earlier than the real start, so a
    /// timeout is never charged for time spent waiting.
    head_started: Instant,
    /// Set once the scheduler has killed the worker; its `Exited` event is still to come.
    killed: Option<KillReason>,
    /// When the worker's group was sent SIGTERM for a cancel, until SIGKILL follows.
    terminated: Option<Instant>,
    /// Jobs in `inflight`, behind the running one, that were cancelled: the running one is
    /// killed when one of them comes to the front, and they end `Cancelled` if the worker
    /// dies before running them.
    cancelled: Vec<JobId>,
    /// Frames encoded this turn, sent in one write.
    outbox: BytesMut,
    /// Whether the front job holds its share of the pool's capacity (every front job does,
    /// from when it is sent to an idle worker or the one before it is answered).
    holding: bool,
}

impl Worker {
    fn accepts_work(&self) -> bool {
        self.ready && self.killed.is_none()
    }

    fn deadline(&self, startup_timeout: Duration, cancel_grace: Duration) -> Option<Instant> {
        if let Some(at) = self.terminated {
            Some(at + cancel_grace)
        } else if self.killed.is_some() {
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
    /// Jobs waiting for a worker, by priority, each priority in submission order (requeued jobs
    /// go back to the front of theirs).
    queue: Lanes,
    /// By slot; `None` while a slot has no process (after the pool gave up).
    workers: Vec<Option<Worker>>,
    /// Given to each supervisor; kept here so `events` never closes.
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    sink: ResultSink,
    /// Results gathered this turn, delivered together.
    finished: Vec<Report<JobId>>,
    /// Jobs with a timeout that started this turn, for `PoolConfig::on_start`.
    started: Vec<JobId>,
    /// What running jobs may hold at once, and what they hold.
    capacity: Capacity,
    /// The devices of counted resources no running job holds.
    devices: holding::FreeDevices,
    usage: Usage,
    status: Arc<PoolStatus>,
    /// Running average of run time per task name (and group), in microseconds; decides
    /// prefetching.
    average_us: HashMap<Cow<'static, str>, RunTimes>,
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
        let capacity = config.capacity_or_default();
        let devices = holding::FreeDevices::new(devices_of(&capacity, &config.devices));
        let mut scheduler = Scheduler {
            devices,
            usage: Usage::new(&capacity),
            capacity,
            workers: (0..config.workers).map(|_| None).collect(),
            config,
            queue: Lanes::default(),
            events_tx,
            events,
            commands,
            sink,
            finished: Vec::new(),
            started: Vec::new(),
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
                    Some(Command::Cancel(ids)) => self.cancel(ids),
                    Some(Command::Workers(tx)) => { let _ = tx.send(self.views()); },
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
                    Ok(Command::Cancel(ids)) => self.cancel(ids),
                    Ok(Command::Workers(tx)) => {
                        let _ = tx.send(self.views());
                    }
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

    fn enqueue(&mut self, job: RunTask) {
        if let Some(reason) = &self.given_up {
            let outcome = Outcome::Lost { reason: reason.clone() };
            self.finished.push(Report::unstarted(job.id, outcome));
            return;
        }
        let shortfall = job.request.as_ref().and_then(|r| self.capacity.shortfall(r));
        if let Some(shortfall) = shortfall {
            let reason = format!("{shortfall}, more than this pool has ({})", self.capacity);
            debug!(task = %job.id, name = %job.name, %reason, "task can never run here");
            self.finished.push(Report::unstarted(job.id, Outcome::Unrunnable { reason }));
            return;
        }
        self.queue.push_back(job);
    }

    /// Withdraws jobs: queued ones end at once; a running one has its worker terminated; one a
    /// worker holds behind its running job is marked, and handled when it comes to the front.
    fn cancel(&mut self, ids: Vec<JobId>) {
        let ids: std::collections::HashSet<JobId> = ids.into_iter().collect();
        let finished = &mut self.finished;
        self.queue.retain(|job| {
            let keep = !ids.contains(&job.id);
            if !keep {
                debug!(task = %job.id, name = %job.name, "queued task cancelled");
                finished.push(Report::unstarted(job.id, cancelled_queued()));
            }
            keep
        });
        for w in self.workers.iter_mut().flatten() {
            let hit: Vec<(usize, JobId)> = (w.inflight.iter().enumerate())
                .filter(|(_, job)| ids.contains(&job.id) && !w.cancelled.contains(&job.id))
                .map(|(i, job)| (i, job.id))
                .collect();
            for (i, id) in hit {
                if i == 0 {
                    // Answered already if the kill comes too late: then it keeps its result.
                    terminate(w, id);
                } else {
                    w.cancelled.push(id);
                }
            }
        }
    }

    /// The ready workers and what each runs.
    fn views(&self) -> Vec<WorkerView> {
        (self.workers.iter().flatten())
            .filter(|w| w.ready && w.killed.is_none())
            .map(|w| WorkerView {
                pid: w.process.pid,
                running: w.inflight.front().map(|job| (job.id, w.head_started)),
            })
            .collect()
    }

    fn deliver(&mut self) {
        if !self.started.is_empty()
            && let Some(on_start) = &self.config.on_start
        {
            on_start(std::mem::take(&mut self.started));
        }
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
            EventKind::Exited { exit, peak_rss } => self.on_exit(slot, exit, peak_rss),
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

    fn on_done(&mut self, slot: usize, batch: Vec<Report<JobId>>) {
        let Some(mut w) = self.workers[slot].take() else { return };
        self.answered(&mut w, batch);
        self.workers[slot] = Some(w);
        // The next job (a plain one, prefetched) holds the CPU the answered one gave back.
        self.hold(slot);
    }

    fn answered(&mut self, w: &mut Worker, batch: Vec<Report<JobId>>) {
        let pid = w.process.pid;
        for done in batch {
            match w.inflight.front() {
                Some(job) if job.id == done.id => {}
                other => {
                    let expected = other.map(|j| j.id);
                    error!(
                        pid,
                        answered = %done.id,
                        ?expected,
                        "worker answered out of order; killing it"
                    );
                    w.killed.get_or_insert(KillReason::Protocol);
                    kill_group(pid);
                    return;
                }
            }
            self.release(w);
            let Some(job) = w.inflight.pop_front() else { return };
            // The next job starts now: it no longer counts as queued.
            if let Some(next) = w.inflight.front() {
                let expected = expected_us(&self.average_us, next).unwrap_or(0.0);
                w.queued_us = (w.queued_us - expected).max(0.0);
            } else {
                w.queued_us = 0.0;
            }
            let us = done.run.elapsed_us as f64;
            match self.average_us.get_mut(job.name.as_ref()) {
                Some(times) => times.record(job.group, us),
                None => {
                    let mut times = RunTimes::default();
                    times.record(job.group, us);
                    self.average_us.insert(job.name.clone(), times);
                }
            }
            // A job cancelled behind the running one that ran anyway (its worker got to it
            // before the cancel): it finished first, and keeps its result.
            if !w.cancelled.is_empty() {
                w.cancelled.retain(|&id| id != job.id);
            }
            debug!(task = %job.id, name = %job.name, pid, us = done.run.elapsed_us, "task finished");
            self.finished.push(Report {
                id: done.id,
                worker: Some(WorkerInfo { pid, host: None, devices: job.devices }),
                run: done.run,
            });
        }
        if let Some(next) = w.inflight.front() {
            w.head_started = Instant::now();
            let cancelled = w.cancelled.iter().position(|&id| id == next.id);
            if let Some(at) = cancelled.filter(|_| !w.cancelled.is_empty()) {
                w.cancelled.swap_remove(at);
                let id = next.id;
                terminate(w, id);
                return;
            }
            if next.timeout.is_some() && self.config.on_start.is_some() {
                self.started.push(next.id);
            }
        }
    }
}

/// The outcome of a job cancelled before it started.
fn cancelled_queued() -> Outcome {
    Outcome::Cancelled { reason: "cancelled before it started".into() }
}

/// The outcome of a job cancelled while it ran.
fn cancelled_running() -> Outcome {
    Outcome::Cancelled { reason: "cancelled while running; its worker was killed".into() }
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
