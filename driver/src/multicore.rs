//! [`MulticoreDispatcher`]: a pool of worker processes on this machine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use blitzen_common::Task;
use blitzen_common::pool::{
    Pool, PoolConfig, PoolError, PoolStatus, RunTask, StatusSnapshot, Submitter, WorkerCommand,
};
use blitzen_common::registry::{self, Registry};
use blitzen_common::worker::{WORKER_START_ENV, is_unentered_worker};
use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::ids::{DriverTaskId, JobId};
use tracing::debug;

use crate::dispatcher::{Backend, Call, Dispatcher, Releaser, sealed};
use crate::error::DispatchError;
use crate::local_shares::LocalShares;
use crate::runtime::{self, RuntimeThread};
use crate::table::ResultTable;

/// Runs tasks on a pool of worker processes of this machine, surviving panics, crashes and
/// runaway tasks.
///
/// Its methods (documented on [`Dispatcher`]):
/// - its own: [`new`](Dispatcher::new), [`builder`](Dispatcher::builder),
///   [`status`](Dispatcher::status), [`wait_for_workers`](Dispatcher::wait_for_workers);
/// - shared with [`DistributedDispatcher`](crate::distributed::DistributedDispatcher):
///   [`run`](Dispatcher::run), [`run_with_timeout`](Dispatcher::run_with_timeout),
///   [`run_with`](Dispatcher::run_with), [`get_results`](Dispatcher::get_results),
///   [`get_results_with`](Dispatcher::get_results_with),
///   [`get_task_results`](Dispatcher::get_task_results), [`map`](Dispatcher::map),
///   [`imap`](Dispatcher::imap), [`imap_unordered`](Dispatcher::imap_unordered),
///   [`as_completed`](Dispatcher::as_completed), [`join`](Dispatcher::join),
///   [`join_within`](Dispatcher::join_within), [`shutdown`](Dispatcher::shutdown),
///   [`pending`](Dispatcher::pending), [`with_default_timeout`](Dispatcher::with_default_timeout).
///
/// The workers are this very program, re-executed: `main` must call
/// [`worker_main`](crate::worker_main) first thing.
pub type MulticoreDispatcher = Dispatcher<Multicore>;

/// The backend of [`MulticoreDispatcher`]: a worker pool driven by a runtime thread of its own.
pub struct Multicore {
    /// Queues jobs into the pool running on the runtime thread.
    submitter: Submitter,
    /// Live view of the workers.
    status: Arc<PoolStatus>,
    /// The thread whose runtime runs the pool; stopping it shuts the pool down.
    thread: RuntimeThread,
    /// This binary's tasks, to group calls for the pool's estimates.
    registry: &'static Registry,
    /// The values shared among its tasks, as files the workers map.
    shares: Arc<LocalShares>,
}

impl sealed::Sealed for Multicore {}

/// Queues `call` into the pool as a job.
fn to_pool(
    submitter: &Submitter,
    registry: &Registry,
    shares: &LocalShares,
    mut call: Call,
) -> Result<(), Outcome> {
    let group = registry.group_of(call.name, &call.args);
    let job = JobId::new(call.id.get());
    let inputs = call.inputs.take().map(|mut inputs| {
        shares.take(job, &mut inputs);
        inputs
    });
    let task = RunTask {
        stream: call.stream,
        timeout: call.timeout,
        retries: call.retries,
        group,
        inputs,
        priority: call.priority,
        ..RunTask::new(job, call.name, call.fingerprint, call.args)
    };
    let job = task.holding(call.request);
    submitter
        .submit(job)
        .map_err(|_| Outcome::Cancelled { reason: "the dispatcher is shut down".into() })
}

impl Backend for Multicore {
    fn submit(&self, call: Call) -> Result<(), Outcome> {
        to_pool(&self.submitter, self.registry, &self.shares, call)
    }

    fn releaser(&self) -> Releaser {
        let (submitter, registry) = (self.submitter.clone(), self.registry);
        let shares = self.shares.clone();
        Box::new(move |call| to_pool(&submitter, registry, &shares, call))
    }

    fn share(&self, bytes: &bytes::Bytes) -> Option<crate::call::Stored> {
        self.shares.share(bytes)
    }

    fn cancel(&self, ids: Vec<DriverTaskId>) {
        // A stopped pool has ended (or will end) every job already; a job's id is its task's.
        let _ = self.submitter.cancel(ids.into_iter().map(|id| JobId::new(id.get())).collect());
    }

    /// Cancels queued and running jobs, kills and reaps every worker, joins the runtime thread.
    fn stop(&self) {
        self.thread.stop();
    }
}

impl fmt::Debug for Multicore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multicore").field("status", &self.status.snapshot()).finish()
    }
}

/// Settings of a [`MulticoreDispatcher`]; start from [`MulticoreDispatcher::builder`].
#[derive(Debug, Clone)]
pub struct MulticoreBuilder {
    pool: PoolConfig,
    default_timeout: Option<Duration>,
    cpus: Option<u32>,
    memory: Option<u64>,
    resources: Vec<(String, u64)>,
    start_task: Option<&'static str>,
}

impl MulticoreBuilder {
    /// Number of worker processes (default: the number of CPUs).
    pub fn workers(mut self, workers: usize) -> Self {
        self.pool.workers = workers;
        self
    }

    /// Timeout of tasks submitted without one (default: none).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// Most extra tasks a busy worker may hold so that it never idles between tiny tasks
    /// (default 256; 0 turns prefetching off). Only tasks whose measured run time is short are
    /// prefetched, and never more than about 2 ms of expected work per worker, so a slow task
    /// does not hold up tasks another worker could run.
    pub fn prefetch(mut self, tasks: usize) -> Self {
        self.pool.prefetch = tasks;
        self
    }

    /// What each worker process runs (default: this program, re-executed, whose `main` calls
    /// [`worker_main`](crate::worker_main) first). The Python package runs its interpreter.
    pub fn worker_command(mut self, command: WorkerCommand) -> Self {
        self.pool.command = command;
        self
    }

    /// How long a new worker may take to start before it is killed (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.pool.startup_timeout = timeout;
        self
    }

    /// CPUs the running tasks may hold at once (default: the number of workers). A plain task
    /// holds one, a task run `with_cpus(2)` two: with 4 CPUs, one such task and two plain ones
    /// run at once.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Memory the running tasks may hold at once, in bytes (default: the machine's). Only
    /// tasks run `with_memory` hold some.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// `count` of the counted resource `name` (`gpu`, `license`…) for the tasks that ask for
    /// it (`with_resource`); a task asking for one the dispatcher has not ends
    /// [`TaskError::Unrunnable`](crate::TaskError::Unrunnable) at once.
    ///
    /// Its devices are numbered `0..count` (see [`devices`](Self::devices)): a running task
    /// holding some is given its own, named in its environment — `BLITZEN_RESOURCE_GPU=1`, and
    /// `CUDA_VISIBLE_DEVICES=1` for `gpu` — and in its result's `WorkerInfo::devices`.
    pub fn resource(mut self, name: impl Into<String>, count: u64) -> Self {
        let name = name.into();
        self.resources.retain(|(n, _)| *n != name);
        self.pool.devices.retain(|(n, _)| *n != name);
        self.resources.push((name, count));
        self
    }

    /// The counted resource `name` as these devices, by index (`devices("gpu", [2, 3])`: two
    /// GPUs, 2 and 3), instead of `0..count`.
    pub fn devices(
        mut self,
        name: impl Into<String>,
        indices: impl IntoIterator<Item = u32>,
    ) -> Self {
        let name = name.into();
        let mut indices: Vec<u32> = indices.into_iter().collect();
        indices.sort_unstable();
        indices.dedup();
        self = self.resource(name.clone(), indices.len() as u64);
        self.pool.devices.push((name, indices));
        self
    }

    /// A task of no arguments (`#[blitzen::task] fn load_model()`) each worker process runs
    /// once, before its first task, again in a worker that replaces one: what is set up there
    /// (a model loaded into a `static`, a connection opened) serves every task of that worker.
    /// If it fails (returns `Err`, panics), the worker does not start: `build` returns the
    /// error, and a pool whose replacement workers fail 5 times in a row gives up, its tasks
    /// ending [`TaskError::Lost`](crate::TaskError::Lost) saying why. For workers running this
    /// program (the default [`worker_command`](Self::worker_command)).
    pub fn on_worker_start<T: Task<Args = ()>>(mut self, _task: T) -> Self {
        self.start_task = Some(T::NAME);
        self
    }

    /// Starts the workers and returns once all of them are ready.
    pub fn build(mut self) -> Result<MulticoreDispatcher, DispatchError> {
        if let Some(name) = self.start_task {
            let command = std::mem::replace(&mut self.pool.command, WorkerCommand::this_binary());
            self.pool.command = command.env(WORKER_START_ENV, name);
        }
        let resources = std::mem::take(&mut self.resources);
        self.pool.offer(self.cpus, self.memory, resources);
        MulticoreDispatcher::start(self)
    }
}

impl Dispatcher<Multicore> {
    /// A dispatcher with `workers` worker processes, started and ready.
    pub fn new(workers: usize) -> Result<Self, DispatchError> {
        Self::builder().workers(workers).build()
    }

    /// Settings beyond the number of workers.
    pub fn builder() -> MulticoreBuilder {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        MulticoreBuilder {
            pool: PoolConfig::new(cpus),
            default_timeout: None,
            cpus: None,
            memory: None,
            resources: Vec::new(),
            start_task: None,
        }
    }

    fn start(settings: MulticoreBuilder) -> Result<Self, DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        let registry = registry::global().map_err(PoolError::from)?;
        let table = Arc::new(ResultTable::new());
        let sink_table = table.clone();
        let shares = Arc::new(LocalShares::default());
        let sink_shares = shares.clone();
        let sink = Box::new(move |batch: Vec<Report<JobId>>| {
            sink_shares.finished(batch.iter().map(|r| r.id));
            sink_table.complete(batch.into_iter().map(report).collect())
        });
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut config = settings.pool;
        let output_table = table.clone();
        config.on_output = Some(Arc::new(move |id: JobId, lines| {
            output_table.output.push(DriverTaskId::new(id.get()), None, lines)
        }));
        let thread = RuntimeThread::spawn(
            "blitzen-multicore",
            runtime::current_thread()?,
            move |stop| async move {
                match Pool::start(config, sink).await {
                    Ok(pool) => {
                        let _ = started_tx.send(Ok((pool.submitter(), pool.status())));
                        stop.cancelled().await;
                        pool.shutdown().await;
                        debug!("multicore dispatcher stopped");
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e.into()));
                    }
                }
            },
        )?;
        let started = started_rx.recv().unwrap_or_else(|_| {
            Err(DispatchError::Runtime(std::io::Error::other("the runtime thread died at start")))
        });
        // On an error the thread has ended: dropping it joins it.
        let (submitter, status) = started?;
        debug!(workers = status.snapshot().target, "multicore dispatcher started");
        let backend = Multicore { submitter, status, thread, registry, shares };
        let mut dispatcher = Dispatcher::assemble(table, backend);
        dispatcher.default_timeout = settings.default_timeout;
        Ok(dispatcher)
    }

    /// The workers now: how many are wanted, the pids of those ready, replacements so far.
    pub fn status(&self) -> StatusSnapshot {
        self.backend.status.snapshot()
    }

    /// Blocks until all workers are up and ready (after a crash, a replacement takes a few
    /// milliseconds) and returns their pids, or `None` after `timeout`.
    pub fn wait_for_workers(&self, timeout: Duration) -> Option<Vec<u32>> {
        self.backend
            .status
            .wait_until(timeout, |s| s.ready_pids.len() == s.target || s.stopped.is_some())
            .filter(|s| s.stopped.is_none())
            .map(|s| s.ready_pids)
    }
}

/// A job's report as the dispatcher's table takes it: by the task number it was submitted
/// under (the job's id is that number).
fn report(r: Report<JobId>) -> Report<DriverTaskId> {
    let id = DriverTaskId::new(r.id.get());
    r.with_id(id)
}
