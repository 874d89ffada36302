//! A pool of worker processes that survives whatever its tasks do.
//!
//! [`Pool::start`] spawns N workers (see [`crate::worker`]) and waits until each has announced
//! itself. [`Pool::submit`] queues a [`RunTask`]; every task ends as exactly one [`Report`], handed
//! in batches to the [`ResultSink`] given at start. Panics are reported by the worker; a worker
//! that dies is replaced at once and its running job (which its start counter names, see
//! `start_mark`) reported `WorkerCrashed`; a job past its timeout (counted from its start on a
//! worker) has its worker's process group killed, is reported `TimedOut`, and the worker is
//! replaced. Jobs a dead worker had received but not started go back to the front of the queue,
//! and so do those it had finished without sending their results yet. [`Submitter::cancel`] withdraws jobs: queued ones
//! at once, running ones by killing their worker.
//!
//! Inside, one scheduler task owns all state (`scheduler`); each worker has a supervisor task
//! reading its socket and reaping it, and a writer task (`process`). The pool runs on any
//! tokio runtime with I/O and time enabled; the multicore dispatcher gives it a runtime thread
//! of its own, a client agent shares its runtime.
//!
//! Scheduling: jobs go to idle workers first. A busy worker is given more only while the work it
//! holds is expected (from a running average of run times per task name) to last less than
//! [`PoolConfig::prefetch_window`], and at most [`PoolConfig::prefetch`] extra jobs. Tiny tasks
//! thus stream without gaps, while a task of unknown or long duration never has work queued
//! behind it that another worker could start.

mod process;
mod scheduler;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blitzen_protocol::{Capacity, ExitReason, JobId, Lines};
pub use blitzen_protocol::{Report, RunTask};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::registry::{self, RegistryError};

pub use status::{PoolStatus, StatusSnapshot};

/// The most workers a pool runs: beyond it a typo is more likely than a machine.
pub const MAX_WORKERS: usize = 4096;

/// How a pool is set up.
#[derive(Clone)]
pub struct PoolConfig {
    /// Worker processes kept alive.
    pub workers: usize,
    /// Most jobs a busy worker may hold beyond the one it runs (0: no prefetching).
    pub prefetch: usize,
    /// Most expected work a worker may hold: a job is prefetched only if the expected run times
    /// of the jobs the worker holds, plus its own, fit in this window.
    pub prefetch_window: Duration,
    /// How long a new worker has to announce itself before it is killed.
    pub startup_timeout: Duration,
    /// Consecutive replacement workers that may fail to start before the pool gives up and
    /// fails every job with `Lost` (a crash loop helps nobody).
    pub max_start_failures: u32,
    /// What is run as a worker: this binary by default, whose `main` must call
    /// `worker_main()` first thing.
    pub command: WorkerCommand,
    /// Told the ids of jobs with a timeout as they start on a worker (an agent passes this on,
    /// so the server can hold the task to its deadline). Called on the pool's runtime; it must
    /// not block.
    pub on_start: Option<Arc<dyn Fn(Vec<JobId>) + Send + Sync>>,
    /// Handed the lines streamed tasks ([`RunTask::stream`]) print, as they come; a job's lines
    /// come before its result reaches the sink. Called on the pool's runtime; it must not
    /// block. Without it, streamed jobs' lines are dropped (their results have them).
    pub on_output: Option<OutputSink>,
    /// How long a worker whose running job was cancelled has, after SIGTERM to its process
    /// group, before the group is sent SIGKILL.
    pub cancel_grace: Duration,
    /// What the running jobs may hold at once: CPUs (a plain job holds one), memory and counted
    /// resources. `None`: one CPU per worker, the machine's memory, no counted resources.
    pub capacity: Option<Capacity>,
    /// The devices of the counted resources named by index (`gpu=2,3`); any other resource's
    /// are `0..count`. A job holding some is given the lowest free ones.
    pub devices: Vec<(String, Vec<u32>)>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch)
            .field("prefetch_window", &self.prefetch_window)
            .field("startup_timeout", &self.startup_timeout)
            .field("max_start_failures", &self.max_start_failures)
            .field("command", &self.command)
            .field("on_start", &self.on_start.is_some())
            .field("on_output", &self.on_output.is_some())
            .field("cancel_grace", &self.cancel_grace)
            .field("capacity", &self.capacity)
            .field("devices", &self.devices)
            .finish()
    }
}

impl PoolConfig {
    /// `workers` workers running this very binary, with the default settings.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            prefetch: 256,
            prefetch_window: Duration::from_millis(2),
            startup_timeout: Duration::from_secs(30),
            max_start_failures: 5,
            command: WorkerCommand::this_binary(),
            on_start: None,
            on_output: None,
            cancel_grace: Duration::from_secs(2),
            capacity: None,
            devices: Vec::new(),
        }
    }

    /// [`PoolConfig::capacity`], or what it stands for when unset.
    pub fn capacity_or_default(&self) -> Capacity {
        (self.capacity.clone()).unwrap_or_else(|| {
            Capacity::of_machine(u32::try_from(self.workers).unwrap_or(u32::MAX))
        })
    }

    /// Offers `cpus`, `memory` and counted `resources` in place of the machine's where given
    /// ([`Capacity::offered`]).
    pub fn offer(&mut self, cpus: Option<u32>, memory: Option<u64>, resources: Vec<(String, u64)>) {
        if let Some(capacity) = Capacity::offered(self.workers, cpus, memory, resources) {
            self.capacity = Some(capacity);
        }
    }
}

/// The program a pool starts as each of its workers, with its arguments and the environment
/// added to the pool's own. It must enter the worker loop ([`crate::worker_main`]) at once:
/// this binary does, and so does the Python package's interpreter command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables set in its environment (on top of the pool's).
    pub env: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// This very binary (`/proc/self/exe`), without arguments.
    pub fn this_binary() -> Self {
        Self::new("/proc/self/exe")
    }

    /// `program`, without arguments.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), args: Vec::new(), env: Vec::new() }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets a variable of the workers' environment.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// Receives finished jobs, in batches, on the pool's runtime. It must not block for long.
pub type ResultSink = Box<dyn FnMut(Vec<Report<JobId>>) + Send>;

/// Receives the lines a streamed job printed ([`PoolConfig::on_output`]).
pub type OutputSink = Arc<dyn Fn(JobId, Lines) + Send + Sync>;

/// The pool could not start.
#[derive(thiserror::Error)]
pub enum PoolError {
    /// Asked for zero workers.
    #[error("a pool needs at least one worker")]
    NoWorkers,
    /// Asked for more than [`MAX_WORKERS`] workers.
    #[error("{0} workers is more than a pool runs (at most {MAX_WORKERS})")]
    TooManyWorkers(usize),
    /// The binary's task registry is invalid; fix the task definitions.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A worker process could not be created (fork/exec failed; resources may be exhausted).
    #[error("cannot start a worker process from `{program}`: {source}")]
    Spawn {
        /// The binary.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A new worker died before announcing itself.
    #[error(
        "worker process {pid} {exit} before it was ready{}{}",
        hint(exit),
        stderr_block(stderr)
    )]
    WorkerExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: ExitReason,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// A new worker did not announce itself in time and was killed.
    #[error(
        "worker process {pid} did not become ready within {timeout:?} and was killed (does \
         main() call blitzen::worker_main() first thing?){}",
        stderr_block(stderr)
    )]
    StartupTimeout {
        /// Its pid.
        pid: u32,
        /// The limit.
        timeout: Duration,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The capacity given makes no sense (no CPUs, no memory, a count of 0, a bad name).
    #[error("bad capacity: {0}")]
    BadCapacity(String),
    /// The pool ended before it was ready.
    #[error("the pool stopped while starting")]
    Stopped,
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Why a worker may have died before it was ready: not what a worker that entered
/// `worker_main` and could not set itself up (its start task failed) says on stderr.
fn hint(exit: &ExitReason) -> &'static str {
    match exit {
        ExitReason::Code(crate::worker::SETUP_FAILED) => "",
        _ => " (does main() call blitzen::worker_main() first thing?)",
    }
}

fn stderr_block(stderr: &str) -> String {
    if stderr.is_empty() { String::new() } else { format!("; its stderr ends with:\n{stderr}") }
}

/// Messages from [`Pool`] handles to the scheduler.
#[derive(Debug)]
enum Command {
    Submit(RunTask),
    Cancel(Vec<JobId>),
    Workers(oneshot::Sender<Vec<WorkerView>>),
    Shutdown(oneshot::Sender<()>),
}

/// One worker process as the pool sees it now (see [`Submitter::workers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// Its process id.
    pub pid: u32,
    /// The job it runs and since when, if any.
    pub running: Option<(JobId, std::time::Instant)>,
}

/// Queues jobs into a pool; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct Submitter {
    commands: mpsc::UnboundedSender<Command>,
}

/// The pool has stopped and takes no more jobs.
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool has stopped")]
pub struct PoolStopped;

impl Submitter {
    /// Queues a job without waiting.
    pub fn submit(&self, job: RunTask) -> Result<(), PoolStopped> {
        self.commands.send(Command::Submit(job)).map_err(|_| PoolStopped)
    }

    /// Withdraws jobs without waiting: a queued one ends `Cancelled` at once; a running one
    /// has its worker's process group sent SIGTERM (SIGKILL after
    /// [`PoolConfig::cancel_grace`]), ends `Cancelled`, and its worker is replaced. A job that
    /// finishes before the cancel reaches it keeps its result; ids the pool does not hold are
    /// ignored. Each job still ends as exactly one [`Report`].
    pub fn cancel(&self, ids: Vec<JobId>) -> Result<(), PoolStopped> {
        self.commands.send(Command::Cancel(ids)).map_err(|_| PoolStopped)
    }

    /// The ready workers now, by slot, and what each runs; empty once the pool has stopped.
    pub async fn workers(&self) -> Vec<WorkerView> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Workers(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for PoolStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A running pool. It runs until [`Pool::shutdown`], or until it and every [`Submitter`] are
/// dropped; either way its workers are killed and reaped.
#[derive(Debug)]
pub struct Pool {
    submitter: Submitter,
    status: Arc<PoolStatus>,
    scheduler: JoinHandle<()>,
}

impl Pool {
    /// Starts `config.workers` workers and returns once all are ready.
    ///
    /// Must be called within a tokio runtime with I/O and time enabled; the pool's tasks run on
    /// it. Cancelling this future stops the workers started so far.
    pub async fn start(config: PoolConfig, sink: ResultSink) -> Result<Pool, PoolError> {
        if config.workers == 0 {
            return Err(PoolError::NoWorkers);
        }
        if config.workers > MAX_WORKERS {
            return Err(PoolError::TooManyWorkers(config.workers));
        }
        if let Some(capacity) = &config.capacity {
            capacity.validate().map_err(PoolError::BadCapacity)?;
        }
        registry::global()?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let status = Arc::new(PoolStatus::new(config.workers));
        let scheduler =
            scheduler::Scheduler::start(config, sink, status.clone(), commands_rx, ready_tx)?;
        let scheduler = tokio::spawn(scheduler.run());
        let pool = Pool { submitter: Submitter { commands: commands_tx }, status, scheduler };
        match ready_rx.await {
            Ok(Ok(())) => Ok(pool),
            Ok(Err(e)) => {
                pool.shutdown().await;
                Err(e)
            }
            Err(_) => Err(PoolError::Stopped),
        }
    }

    /// A handle for queueing jobs from anywhere.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: RunTask) -> Result<(), PoolStopped> {
        self.submitter.submit(job)
    }

    /// Live view of the workers.
    pub fn status(&self) -> Arc<PoolStatus> {
        self.status.clone()
    }

    /// Ends every queued or running job as `Cancelled`, kills the workers (and their process
    /// groups), reaps them, and returns when all are gone.
    pub async fn shutdown(self) {
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.submitter.commands.send(Command::Shutdown(ack_tx)).is_ok() {
            let _ = ack_rx.await;
        }
        let _ = self.scheduler.await;
    }
}
