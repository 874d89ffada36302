//! [`MulticoreDispatcher`]: a pool of worker processes on this machine.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use blitzen_common::Task;
use blitzen_common::pool::{Job, Pool, PoolConfig, PoolStatus, StatusSnapshot, Submitter};
use blitzen_common::task::encode_value;
use blitzen_common::worker::is_unentered_worker;
use blitzen_protocol::Outcome;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::debug;

use crate::results::{DispatchError, Fetch, Finished, ResultTable, RunOptions, TaskId, TaskResult};
use blitzen_common::TaskError;

/// Runs tasks on a pool of worker processes of this machine, surviving panics, crashes and
/// runaway tasks.
///
/// The API is blocking, like the Python original: [`run`](Self::run) never waits (the task
/// starts or is queued at once), [`get_results`](Self::get_results) and [`join`](Self::join)
/// block the calling thread until the tasks are done. All methods take `&self` and the
/// dispatcher is `Sync`, so several threads may submit and wait at once. From async code, call
/// the waiting methods inside `tokio::task::spawn_blocking` (they would otherwise stall the
/// executor thread); `run` is fine anywhere.
///
/// The workers are this very program, re-executed: `main` must call
/// [`worker_main`](crate::worker_main) first thing.
pub struct MulticoreDispatcher {
    /// Results, pending and finished, until fetched.
    table: Arc<ResultTable>,
    /// Queues jobs into the pool running on the runtime thread.
    submitter: Submitter,
    /// Live view of the workers.
    status: Arc<PoolStatus>,
    /// Timeout of tasks submitted without one.
    default_timeout: Option<Duration>,
    /// The runtime thread and the signal that stops it; taken by the first `shutdown`.
    control: Mutex<Option<Control>>,
}

struct Control {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// Settings of a [`MulticoreDispatcher`]; start from [`MulticoreDispatcher::builder`].
#[derive(Debug, Clone)]
pub struct MulticoreBuilder {
    pool: PoolConfig,
    default_timeout: Option<Duration>,
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

    /// How long a new worker may take to start before it is killed (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.pool.startup_timeout = timeout;
        self
    }

    /// Starts the workers and returns once all of them are ready.
    pub fn build(self) -> Result<MulticoreDispatcher, DispatchError> {
        MulticoreDispatcher::start(self)
    }
}

impl MulticoreDispatcher {
    /// A dispatcher with `workers` worker processes, started and ready.
    pub fn new(workers: usize) -> Result<Self, DispatchError> {
        Self::builder().workers(workers).build()
    }

    /// Settings beyond the number of workers.
    pub fn builder() -> MulticoreBuilder {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        MulticoreBuilder { pool: PoolConfig::new(cpus), default_timeout: None }
    }

    fn start(settings: MulticoreBuilder) -> Result<Self, DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        let table = Arc::new(ResultTable::new());
        let sink_table = table.clone();
        let sink = Box::new(move |batch: Vec<blitzen_common::pool::JobResult>| {
            sink_table.complete(batch.into_iter().map(Finished::from).collect())
        });
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = settings.pool;
        let thread = std::thread::Builder::new()
            .name("blitzen-multicore".into())
            .spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = started_tx.send(Err(DispatchError::Runtime(e)));
                            return;
                        }
                    };
                runtime.block_on(async move {
                    match Pool::start(config, sink).await {
                        Ok(pool) => {
                            let _ = started_tx.send(Ok((pool.submitter(), pool.status())));
                            // Also resolves when the dispatcher is dropped without a shutdown.
                            let _ = stopped.await;
                            pool.shutdown().await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e.into()));
                        }
                    }
                });
            })
            .map_err(DispatchError::Runtime)?;
        let started = started_rx.recv().unwrap_or_else(|_| {
            Err(DispatchError::Runtime(std::io::Error::other("the runtime thread died at start")))
        });
        let (submitter, status) = match started {
            Ok(ok) => ok,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        debug!(workers = status.snapshot().target, "multicore dispatcher started");
        Ok(MulticoreDispatcher {
            table,
            submitter,
            status,
            default_timeout: settings.default_timeout,
            control: Mutex::new(Some(Control { stop, thread })),
        })
    }

    /// Submits `task(args)` and returns its id at once; the task starts, or is queued, without
    /// waiting. No arguments: `()`; several: a tuple. Uses the dispatcher's default timeout.
    pub fn run<T: Task>(&self, task: T, args: T::Args) -> TaskId<T::Output> {
        self.run_with(task, args, RunOptions::default())
    }

    /// [`run`](Self::run) with a timeout, counted from the task's start on a worker: past it,
    /// the worker (and every process it started) is killed and the task fails with
    /// [`TaskError::TimedOut`]. The seed's `run(f, x, timeout=7)`.
    pub fn run_with_timeout<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Duration,
    ) -> TaskId<T::Output> {
        self.run_with(task, args, RunOptions::timeout(timeout))
    }

    /// [`run`](Self::run) with options.
    pub fn run_with<T: Task>(
        &self,
        _task: T,
        args: T::Args,
        options: RunOptions,
    ) -> TaskId<T::Output> {
        let (id, closed) = self.table.register(T::NAME, T::SIGNATURE);
        if closed {
            return id;
        }
        let args = match encode_value(&args) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.table.settle(id.seq(), Outcome::BadArguments { message: e.to_string() });
                return id;
            }
        };
        let job = Job {
            id: id.seq(),
            name: T::NAME.into(),
            fingerprint: T::FINGERPRINT,
            args,
            timeout: options.timeout.or(self.default_timeout),
        };
        if self.submitter.submit(job).is_err() {
            let reason = "the dispatcher is shut down".to_string();
            self.table.settle(id.seq(), Outcome::Cancelled { reason });
        }
        id
    }

    /// Blocks until every listed task has finished, then returns their results in the order of
    /// `ids` and removes them from the dispatcher.
    ///
    /// An id of another dispatcher, or one already fetched, is an error at once, never a wait.
    pub fn get_results<O: DeserializeOwned>(
        &self,
        ids: &[TaskId<O>],
    ) -> Result<Vec<Result<O, TaskError>>, DispatchError> {
        self.get_results_with(ids, Fetch::default())
    }

    /// [`get_results`](Self::get_results) with options: keep the results (`Fetch::keep()`),
    /// or wait at most some time (`Fetch::default().within(d)`).
    pub fn get_results_with<O: DeserializeOwned>(
        &self,
        ids: &[TaskId<O>],
        fetch: Fetch,
    ) -> Result<Vec<Result<O, TaskError>>, DispatchError> {
        let results = self.table.fetch(ids, fetch)?;
        Ok(results.iter().map(TaskResult::decode).collect())
    }

    /// Like [`get_results_with`](Self::get_results_with), but returns each task's full
    /// [`TaskResult`] (undecoded value, captured stdout and stderr, worker, run time). Works
    /// for ids of mixed types made alike with [`TaskId::untyped`].
    pub fn get_task_results<O>(
        &self,
        ids: &[TaskId<O>],
        fetch: Fetch,
    ) -> Result<Vec<TaskResult>, DispatchError> {
        self.table.fetch(ids, fetch)
    }

    /// Waits for every task, returns every result not yet fetched in submission order, then
    /// shuts down. Decode each with [`TaskResult::decode`] or [`TaskResult::decode_as`].
    pub fn join(&self) -> Vec<TaskResult> {
        let results = self.table.take_all();
        self.shutdown();
        results
    }

    /// Stops the workers: tasks still queued or running end as [`TaskError::Cancelled`], every
    /// worker process and what it started is killed and reaped. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let control = self.control.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(Control { stop, thread }) = control {
            let _ = stop.send(());
            let _ = thread.join();
            debug!("multicore dispatcher stopped");
        }
        self.table.close(Outcome::Cancelled { reason: "the dispatcher is shut down".into() });
    }

    /// Tasks submitted and not yet finished.
    pub fn pending(&self) -> usize {
        self.table.pending()
    }

    /// The workers now: how many are wanted, the pids of those ready, replacements so far.
    pub fn status(&self) -> StatusSnapshot {
        self.status.snapshot()
    }

    /// Blocks until all workers are up and ready (after a crash, a replacement takes a few
    /// milliseconds) and returns their pids, or `None` after `timeout`.
    pub fn wait_for_workers(&self, timeout: Duration) -> Option<Vec<u32>> {
        self.status
            .wait_until(timeout, |s| s.ready_pids.len() == s.target || s.stopped.is_some())
            .filter(|s| s.stopped.is_none())
            .map(|s| s.ready_pids)
    }
}

impl Drop for MulticoreDispatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for MulticoreDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MulticoreDispatcher")
            .field("status", &self.status.snapshot())
            .field("pending", &self.table.pending())
            .field("default_timeout", &self.default_timeout)
            .finish()
    }
}
