//! [`Dispatcher`]: the API both dispatchers share, written once over a [`Backend`].
//!
//! [`MulticoreDispatcher`](crate::MulticoreDispatcher) is `Dispatcher<Multicore>` and
//! [`DistributedDispatcher`](crate::distributed::DistributedDispatcher) is
//! `Dispatcher<Cluster>`: the same methods, by construction. What differs — starting a pool,
//! connecting to a server — lives in the backend and in each alias's own constructors.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use blitzen_common::task::encode_value;
use blitzen_common::{Task, TaskError};
use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::{Lines, Outcome};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::DispatchError;
use crate::output::{Output, OutputLines, OutputReader, print_prefixed};
use crate::results::{Fetch, RunOptions, TaskId, TaskResult};
use crate::table::{DispatcherStats, ResultTable};

pub use crate::call::{Call, Releaser};

/// A task by its registered name, signature and [fingerprint](blitzen_common::task::fingerprint),
/// for [`Dispatcher::run_named`]. A worker runs it only if its own entry of that name has the
/// same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedTask {
    /// The name the task is registered under.
    pub name: &'static str,
    /// Its signature, quoted in errors.
    pub signature: &'static str,
    /// The fingerprint of the signature.
    pub fingerprint: u64,
}

/// Where a dispatcher's tasks run: [`Multicore`](crate::Multicore) worker processes here, or a
/// [`Cluster`](crate::distributed::Cluster). Implemented by Blitzen only.
pub trait Backend: Send + Sync + sealed::Sealed {
    /// Sends a call on its way without waiting; returns the outcome to settle it with when it
    /// cannot be sent (the backend has stopped).
    #[doc(hidden)]
    fn submit(&self, call: Call) -> Result<(), Outcome>;

    /// Withdraws tasks by number without waiting; each still ends with exactly one result.
    #[doc(hidden)]
    fn cancel(&self, ids: Vec<DriverTaskId>);

    /// Stops whatever runs the tasks; idempotent.
    #[doc(hidden)]
    fn stop(&self);

    /// What sends a task released by the result table once its inputs came in, from whatever
    /// thread completed them.
    #[doc(hidden)]
    fn releaser(&self) -> Releaser;

    /// Whether what runs the tasks holds a task with inputs until they are in (the cluster's
    /// server does): then the dispatcher sends it at once, with what it waits for, instead of
    /// holding it itself.
    #[doc(hidden)]
    fn holds_inputs(&self) -> bool {
        false
    }

    /// Stores `bytes` to be shared among tasks, when what runs them can (the cluster's server
    /// can: it sends the value to each agent once); `None`: each task gets the bytes.
    #[doc(hidden)]
    fn share(&self, _bytes: &bytes::Bytes) -> Option<crate::call::Stored> {
        None
    }
}

/// Runs the blocking wait `wait` of the call `call` unless that would stall the Tokio runtime
/// whose thread this is. On a worker of a multi-thread runtime the wait goes through
/// `block_in_place`, which hands the worker's other tasks to another thread first; on a
/// current-thread runtime's own thread it is refused at once with
/// [`DispatchError::WouldStall`], naming `instead`, its async twin. Elsewhere (no runtime, or a
/// thread of `spawn_blocking`) it simply waits.
///
/// A current-thread runtime's `spawn_blocking` threads cannot be told from its own thread by
/// any API of Tokio's; they are told by name (Tokio's default, `tokio-rt-worker`, or
/// `tokio-runtime-worker` in older versions, unless the runtime was built with another).
pub(crate) fn blocking<T>(
    call: &'static str,
    instead: &'static str,
    wait: impl FnOnce() -> Result<T, DispatchError>,
) -> Result<T, DispatchError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        Ok(_)
            if !matches!(
                std::thread::current().name(),
                Some("tokio-rt-worker" | "tokio-runtime-worker")
            ) =>
        {
            Err(DispatchError::WouldStall { call, instead })
        }
        _ => wait(),
    }
}

/// How a task cancelled while it waited for its inputs ends.
fn cancelled_waiting() -> Outcome {
    Outcome::Cancelled { reason: "cancelled while it waited for its inputs".into() }
}

/// The longest a fetch waits for the lines of its tasks to be handed on.
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) mod sealed {
    /// Keeps [`Backend`](super::Backend) implemented by this crate only.
    pub trait Sealed {}
}

/// Runs tasks, keeps their results until fetched, and survives whatever the tasks do. Used as
/// [`MulticoreDispatcher`](crate::MulticoreDispatcher) or
/// [`DistributedDispatcher`](crate::distributed::DistributedDispatcher).
///
/// The API is blocking, like the Python original: [`run`](Self::run) never waits (the task
/// starts or is queued at once); [`get_results`](Self::get_results) and [`join`](Self::join)
/// block the calling thread until the tasks are done. All methods take `&self` and dispatchers
/// are `Sync`, so several threads may submit and wait at once. From async code, call the waiting
/// methods inside `tokio::task::spawn_blocking`; `run` is fine anywhere.
pub struct Dispatcher<B: Backend> {
    /// Results, pending and finished, until fetched.
    pub(crate) table: Arc<ResultTable>,
    /// Timeout of tasks submitted without one.
    pub(crate) default_timeout: Option<Duration>,
    /// Unrunnable limit of tasks submitted without one (set on clusters only).
    pub(crate) default_unrunnable_limit: Option<Duration>,
    pub(crate) backend: B,
    /// Whether tasks are streamed ([`Dispatcher::with_output`]).
    pub(crate) streaming: bool,
    /// The thread that hands streamed lines on, for [`Output::Stream`] and [`Output::Handler`].
    pub(crate) output_thread: Mutex<Option<JoinHandle<()>>>,
}

impl<B: Backend> Dispatcher<B> {
    /// A dispatcher over `backend`, filling `table`.
    pub(crate) fn assemble(table: Arc<ResultTable>, backend: B) -> Self {
        table.set_releaser(backend.releaser());
        Self {
            table,
            default_timeout: None,
            default_unrunnable_limit: None,
            backend,
            streaming: false,
            output_thread: Mutex::new(None),
        }
    }

    /// Sets what is done with what tasks submitted from now on print while they run: see
    /// [`Output`]. `Output::Stream` writes each line to this process's stdout or stderr as it
    /// comes, `[task 12 on node3] ` before it.
    ///
    /// Choose once, when the dispatcher is made: once a thread hands lines to a handler
    /// (`Stream`, `Handler`), a later choice is ignored, with a warning.
    pub fn with_output(mut self, output: Output) -> Self {
        if lock(&self.output_thread).is_some() {
            tracing::warn!(
                ?output,
                "the dispatcher's output was chosen already; this choice is ignored"
            );
            return self;
        }
        self.streaming = !matches!(output, Output::Capture);
        let handler: Arc<dyn Fn(&OutputLines) + Send + Sync> = match output {
            Output::Capture | Output::Collect => return self,
            Output::Stream => Arc::new(|lines: &OutputLines| {
                let lines_ = Lines { stream: lines.stream, text: lines.text.clone() };
                print_prefixed(lines.task.task(), lines.host.as_deref(), &lines_)
            }),
            Output::Handler(handler) => handler,
        };
        let table = self.table.clone();
        let spawned = std::thread::Builder::new().name("blitzen-output".into()).spawn(move || {
            while table.output.wait(None) {
                let origin = table.origin();
                for (id, host, lines) in table.output.take_in_hand() {
                    let task = TaskId::new(origin, id.get());
                    handler(&OutputLines { task, host, stream: lines.stream, text: lines.text });
                }
                table.output.handed();
            }
        });
        match spawned {
            Ok(thread) => *lock(&self.output_thread) = Some(thread),
            Err(e) => {
                let what =
                    "cannot start the thread that prints tasks' lines; they stay in the results";
                tracing::warn!(error = %e, "{what}");
                self.streaming = false;
            }
        }
        self
    }

    /// Where the lines of streamed tasks wait with [`Output::Collect`]; it does not keep the
    /// dispatcher alive.
    pub fn output_reader(&self) -> OutputReader {
        OutputReader { table: self.table.clone() }
    }

    /// Sets the timeout of tasks submitted without one.
    pub fn with_default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// Submits `task(args)` and returns its id at once; the task starts, or is queued, without
    /// waiting. No arguments: `()`; several: a tuple. Uses the default timeout, if any.
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
        let task =
            NamedTask { name: T::NAME, signature: T::SIGNATURE, fingerprint: T::FINGERPRINT };
        let (id, closed) = self.table.register(options.label.unwrap_or(T::NAME), T::SIGNATURE);
        if closed {
            return id;
        }
        let options = if T::NEEDS.is_plain() {
            options
        } else {
            RunOptions { needs: T::NEEDS.overridden_by(&options.needs), ..options }
        };
        match encode_value(&args) {
            Ok(args) => self.send(task, id.task(), args, &options),
            Err(e) => {
                self.table.settle(id.task(), Outcome::BadArguments { message: e.to_string() })
            }
        }
        id
    }

    /// Submits a task known by name only, with its arguments already encoded as that task
    /// expects, and returns its id at once. For bindings to other languages, whose tasks are no
    /// Rust functions (the Python package's `python` task takes a pickle); Rust programs use
    /// [`run`](Self::run). Fetch the result with [`get_task_results`](Self::get_task_results).
    pub fn run_named(&self, task: NamedTask, args: Bytes, options: RunOptions) -> TaskId {
        let shown = options.label.unwrap_or(task.name);
        let (id, closed) = self.table.register(shown, task.signature);
        if !closed {
            self.send(task, id.task(), args, &options);
        }
        id
    }

    /// Sends task `id` to the backend; settles it when it cannot be.
    pub(crate) fn send(
        &self,
        task: NamedTask,
        id: DriverTaskId,
        args: Bytes,
        options: &RunOptions,
    ) {
        let sent = self.call(task, id, args, options).and_then(|call| self.backend.submit(call));
        if let Err(outcome) = sent {
            self.table.settle(id, outcome);
        }
    }

    /// The call of task `id`, or the outcome to settle it with when what it asks for cannot be.
    pub(crate) fn call(
        &self,
        task: NamedTask,
        id: DriverTaskId,
        args: Bytes,
        options: &RunOptions,
    ) -> Result<Call, Outcome> {
        let request = match options.needs.is_plain().then_some(None) {
            Some(plain) => plain,
            None => match options.needs.request() {
                Ok(request) => request.map(Arc::new),
                Err(e) => {
                    let reason = format!("it asks for what cannot be: {e}");
                    return Err(Outcome::Refused { reason });
                }
            },
        };
        Ok(Call {
            id,
            name: task.name,
            signature: task.signature,
            fingerprint: task.fingerprint,
            args,
            timeout: options.timeout.or(self.default_timeout),
            retries: options.retries,
            unrunnable_limit: options.unrunnable_limit.or(self.default_unrunnable_limit),
            request,
            label: options.label,
            stream: self.streaming,
            priority: options.needs.priority.unwrap_or(0),
            inputs: None,
        })
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
        let results = blocking("get_results", "dispatcher.results(&ids)", || {
            let results = self.table.fetch(ids, fetch)?;
            self.settle_output();
            Ok(results)
        })?;
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
        blocking("get_task_results", "dispatcher.results(&ids)", || {
            let results = self.table.fetch(ids, fetch)?;
            self.settle_output();
            Ok(results)
        })
    }

    /// With a thread handing streamed lines on, waits until it has handed on those that came
    /// before the results just fetched (at most [`SETTLE_LIMIT`]: a stuck handler delays
    /// results no longer).
    pub(crate) fn settle_output(&self) {
        if self.hands_output_on() {
            self.table.output.settle(SETTLE_LIMIT);
        }
    }

    /// Whether a thread of this dispatcher hands streamed lines on ([`Output::Stream`],
    /// [`Output::Handler`]).
    pub(crate) fn hands_output_on(&self) -> bool {
        self.streaming && lock(&self.output_thread).is_some()
    }

    /// Waits for every task, returns every result not yet fetched in submission order, then
    /// shuts down. Decode each with [`TaskResult::decode`] or [`TaskResult::decode_as`].
    ///
    /// It waits as long as the tasks take; [`join_within`](Self::join_within) gives up after a
    /// limit.
    ///
    /// # Panics
    ///
    /// On the thread of a current-thread Tokio runtime, which it would stall: await
    /// [`join_async`](Self::join_async) there (see [`DispatchError::WouldStall`]).
    pub fn join(&self) -> Vec<TaskResult> {
        let joined = blocking("join", "dispatcher.join_async()", || {
            let results = self.table.take_all(None).unwrap_or_default();
            self.settle_output();
            Ok(results)
        });
        let results = joined.unwrap_or_else(|e| panic!("{e}"));
        self.shutdown();
        results
    }

    /// [`join`](Self::join), waiting at most `limit` for the tasks to finish. When some are
    /// still unfinished then, it returns [`DispatchError::WaitTimedOut`] — saying why, when it
    /// is known, e.g. that no connected agent has a task — and does not shut down: every
    /// result stays, for another `join` or a `get_results`. (Dropping the dispatcher shuts it
    /// down.)
    pub fn join_within(&self, limit: Duration) -> Result<Vec<TaskResult>, DispatchError> {
        let results = blocking("join_within", "dispatcher.join_async()", || {
            let results = self.table.take_all(Some(limit))?;
            self.settle_output();
            Ok(results)
        })?;
        self.shutdown();
        Ok(results)
    }

    /// Cancels a task without waiting: a queued one ends [`TaskError::Cancelled`] at once; a
    /// running one has its worker's process group sent SIGTERM (SIGKILL after a short grace,
    /// if anything is left), ends `Cancelled`, and its worker is replaced. The first final
    /// state wins: a task that finished before the cancel reached it keeps its result.
    /// Cancelling a finished (or fetched) task does nothing; an id of another dispatcher is
    /// [`DispatchError::UnknownTask`]. Wait for the outcome with
    /// [`get_results`](Self::get_results) as usual.
    pub fn cancel<O>(&self, id: &TaskId<O>) -> Result<(), DispatchError> {
        self.cancel_many(std::slice::from_ref(id))
    }

    /// [`cancel`](Self::cancel) for several tasks; every id is checked before any is cancelled.
    pub fn cancel_many<O>(&self, ids: &[TaskId<O>]) -> Result<(), DispatchError> {
        let seqs = self.table.unfinished(ids)?;
        let sent = self.table.cancel_waiting(seqs, &cancelled_waiting());
        if !sent.is_empty() {
            self.backend.cancel(sent);
        }
        Ok(())
    }

    /// Cancels every task not finished yet (see [`cancel`](Self::cancel)); returns how many
    /// that was. The dispatcher stays usable.
    pub fn cancel_all(&self) -> usize {
        let seqs = self.table.all_unfinished();
        let count = seqs.len();
        let sent = self.table.cancel_waiting(seqs, &cancelled_waiting());
        if !sent.is_empty() {
            self.backend.cancel(sent);
        }
        count
    }

    /// Stops: tasks still queued or running end as [`TaskError::Cancelled`]; local workers
    /// (and what they started) are killed and reaped, a cluster connection says goodbye.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.backend.stop();
        self.table.close(Outcome::Cancelled { reason: "the dispatcher is shut down".into() });
        // The lines that came before the stop are handed on before this returns.
        self.table.output.close();
        if let Some(thread) = lock(&self.output_thread).take() {
            let _ = thread.join();
        }
    }

    /// The id of this dispatcher's task number `seq` ([`TaskId::seq`]), for bindings that hand
    /// out task numbers, as the Python package does. A number never issued stays unknown:
    /// fetching it is [`DispatchError::UnknownTask`].
    pub fn id_of(&self, seq: u64) -> TaskId {
        TaskId::new(self.table.origin(), seq)
    }

    /// Tasks submitted and not yet finished.
    pub fn pending(&self) -> usize {
        self.table.pending()
    }

    /// What this dispatcher has counted: see [`DispatcherStats`].
    pub fn stats(&self) -> DispatcherStats {
        self.table.stats()
    }
}

impl<B: Backend> Drop for Dispatcher<B> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<B: Backend + fmt::Debug> fmt::Debug for Dispatcher<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("backend", &self.backend)
            .field("pending", &self.table.pending())
            .field("default_timeout", &self.default_timeout)
            .field("default_unrunnable_limit", &self.default_unrunnable_limit)
            .finish()
    }
}
