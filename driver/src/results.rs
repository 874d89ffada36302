//! What a submission and a fetch are about: task ids ([`TaskId`]), the options of a run and of
//! a fetch ([`RunOptions`], [`Fetch`]), and the result of one task ([`TaskResult`]).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::time::Duration;

use blitzen_common::error::{STDERR_TAIL_BYTES, STDERR_TAIL_LINES};
use blitzen_common::needs::Needs;
use blitzen_common::task::decode_shared_value;
use blitzen_common::{DecodeTarget, Task, TaskContext, TaskError, WorkerInfo};
use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::{Finished, Outcome};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// The type parameter of an id whose output type is not tracked ([`TaskId::untyped`]).
#[derive(Debug)]
pub enum Untyped {}

/// The id of a submitted task, typed by the task's output so that
/// [`get_results`](crate::MulticoreDispatcher::get_results) returns values of that type. Ids of
/// different task types mix in one call after [`TaskId::untyped`].
pub struct TaskId<O = Untyped> {
    /// Which dispatcher issued it, so an id is never looked up in another dispatcher.
    pub(crate) origin: u32,
    /// Its number within the dispatcher.
    pub(crate) seq: u64,
    _output: PhantomData<fn() -> O>,
}

impl<O> TaskId<O> {
    pub(crate) fn new(origin: u32, seq: u64) -> Self {
        Self { origin, seq, _output: PhantomData }
    }

    /// The number of the task within its dispatcher: 1, 2, 3… in submission order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The task as the dispatcher's table, its backend and the server know it.
    pub(crate) fn task(&self) -> DriverTaskId {
        DriverTaskId::new(self.seq)
    }

    /// The same id without its output type.
    pub fn untyped(self) -> TaskId {
        TaskId::new(self.origin, self.seq)
    }
}

impl<O> Clone for TaskId<O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<O> Copy for TaskId<O> {}

/// A task's handle stands where a value of its output type goes among the arguments of
/// [`submit`](crate::Dispatcher::submit): the task runs with that result.
impl<O> blitzen_common::inputs::Input<O> for TaskId<O> {
    fn part(self) -> blitzen_common::inputs::Part {
        blitzen_common::inputs::Part::Result { origin: self.origin, seq: self.seq }
    }
}
impl<O> PartialEq for TaskId<O> {
    fn eq(&self, other: &Self) -> bool {
        (self.origin, self.seq) == (other.origin, other.seq)
    }
}
impl<O> Eq for TaskId<O> {}
impl<O> Hash for TaskId<O> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.origin, self.seq).hash(state);
    }
}
/// Saved as `[origin, seq]`, e.g. to a file, for a process that
/// [`attach`](crate::distributed::DistributedDispatcher::attach)es to the session later: ids of
/// a cluster session are valid in every dispatcher of that session.
impl<O> serde::Serialize for TaskId<O> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&(self.origin, self.seq), serializer)
    }
}

impl<'de, O> serde::Deserialize<'de> for TaskId<O> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (origin, seq) = <(u32, u64) as serde::Deserialize>::deserialize(deserializer)?;
        Ok(Self::new(origin, seq))
    }
}

impl<O> fmt::Debug for TaskId<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.seq)
    }
}
impl<O> fmt::Display for TaskId<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.seq)
    }
}

/// Options of one submission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Limit on the task's run time, counted from its start on a worker (never queue time).
    /// Overrides the dispatcher's default.
    pub timeout: Option<Duration>,
    /// Times to run the task again, on a fresh worker, when it crashes its worker (abort,
    /// segfault, `exit`, out of memory) or times out. 0 (the default): such a task is reported
    /// at once, so a task that crashes whatever runs it does not crash workers forever. A
    /// returned error or a panic is the task's answer and is never retried.
    pub retries: u32,
    /// On a cluster: how long the task may wait while no connected agent can run it (none is
    /// connected, or none was built with this task) before it ends
    /// [`TaskError::Unrunnable`]. The count starts when it is submitted, or when the last agent
    /// that could run it leaves, and starts again whenever such an agent has come and gone.
    /// `None` (the default): it waits for as long as it takes, and the driver logs a warning
    /// now and then. Tasks on one machine can always run: the limit does not apply there.
    pub unrunnable_limit: Option<Duration>,
    /// What the task holds while it runs, overriding its `#[task(...)]` defaults field by
    /// field: see [`with_cpus`](Self::with_cpus), [`with_memory`](Self::with_memory),
    /// [`with_resource`](Self::with_resource).
    pub needs: Needs,
    /// What people see the task as — in errors, a cluster's status, failures, dashboard and
    /// metrics — instead of its name; `None`: its name.
    pub label: Option<&'static str>,
}

/// A task another runs after ([`Dispatcher::after`](crate::Dispatcher::after),
/// [`Dispatcher::after_any`](crate::Dispatcher::after_any)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Predecessor {
    pub(crate) origin: u32,
    pub(crate) seq: u64,
    /// Whether the task runs whatever this one's outcome (`after_any`).
    pub(crate) any: bool,
}

impl Predecessor {
    pub(crate) fn of<O>(id: &TaskId<O>, any: bool) -> Self {
        Self { origin: id.origin, seq: id.seq, any }
    }
}

impl RunOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..Self::default() }
    }

    /// The same options with `retries` reruns after a crash or a timeout.
    pub fn with_retries(self, retries: u32) -> Self {
        Self { retries, ..self }
    }

    /// The same options, giving up with [`TaskError::Unrunnable`] after waiting `limit` while
    /// no connected agent could run the task (see [`RunOptions::unrunnable_limit`]).
    pub fn with_unrunnable_limit(self, limit: Duration) -> Self {
        Self { unrunnable_limit: Some(limit), ..self }
    }

    /// The same options, the task holding `cpus` CPUs (worker slots) while it runs: it starts
    /// only where that many are free. A plain task holds one.
    pub fn with_cpus(self, cpus: u32) -> Self {
        Self { needs: self.needs.with_cpus(cpus), ..self }
    }

    /// The same options, the task holding `bytes` of memory while it runs — also its limit:
    /// past it, the task ends [`TaskError::MemoryExceeded`] and its worker is replaced. It
    /// starts only where that much memory is free. [`blitzen::parse_size`](crate::parse_size)
    /// reads `"4GiB"`.
    pub fn with_memory(self, bytes: u64) -> Self {
        Self { needs: self.needs.with_memory(bytes), ..self }
    }

    /// The same options, the task with priority `priority`: among the tasks waiting to start,
    /// higher first (0 unless said; negative is lower). A waiting task's priority rises one level
    /// a second up to the highest waiting, so none waits for ever (the book's "Priorities", in
    /// docs/multicore.md). On a cluster the order is within each driver's tasks; drivers still
    /// take turns.
    pub fn with_priority(self, priority: i32) -> Self {
        Self { needs: self.needs.with_priority(priority), ..self }
    }

    /// The same options, the task shown as `label` instead of its name (the Python package
    /// labels its calls with their function, `__main__.f2`, since they all run as `python`).
    pub fn with_label(self, label: &'static str) -> Self {
        Self { label: Some(label), ..self }
    }

    /// The same options, the task holding `count` of the counted resource `name` (`gpu`,
    /// `license`…) while it runs: it runs only on an agent that advertises it, where that many
    /// are free. Panics past four names per task.
    pub fn with_resource(self, name: &'static str, count: u64) -> Self {
        Self { needs: self.needs.with_resource(name, count), ..self }
    }
}

/// How to fetch results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Remove the results from the dispatcher (the default). With `false` they stay and can be
    /// fetched again.
    pub clear: bool,
    /// Give up waiting after this long with
    /// [`DispatchError::WaitTimedOut`](crate::DispatchError::WaitTimedOut); the results stay.
    pub timeout: Option<Duration>,
}

impl Default for Fetch {
    fn default() -> Self {
        Self { clear: true, timeout: None }
    }
}

impl Fetch {
    /// Fetch and keep the results in the dispatcher (`clear = false`).
    pub fn keep() -> Self {
        Self { clear: false, timeout: None }
    }

    /// The same, waiting at most `timeout`.
    pub fn within(self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self }
    }
}

/// The result of one task, whatever its type: how its run ended — the value still encoded, or
/// why there is none, and what the task printed — with the task's id, name and worker.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// The task's id number ([`TaskId::seq`]).
    pub id: u64,
    /// The task's name.
    pub task: Cow<'static, str>,
    /// The worker that ran it, if it reached one.
    pub worker: Option<WorkerInfo>,
    /// How the run ended: its outcome, its captured stdout and stderr (64 KiB each at most),
    /// its run time.
    pub run: Finished,
    /// The submitter's signature of the task, quoted when a worker has another.
    pub(crate) signature: &'static str,
}

impl TaskResult {
    /// Whether the task produced a value.
    pub fn is_ok(&self) -> bool {
        matches!(self.run.outcome, Outcome::Value(_))
    }

    /// The encoded value, or the task's error: which task, where, why, and the end of what it
    /// wrote to stderr.
    pub fn outcome(&self) -> Result<&Bytes, TaskError> {
        let ctx = || self.context(self.run.stderr.last_lines(STDERR_TAIL_LINES, STDERR_TAIL_BYTES));
        TaskError::from_outcome(&self.run.outcome, ctx, self.signature)
    }

    /// The value decoded as `O`, or the task's error.
    pub fn decode<O: DeserializeOwned>(&self) -> Result<O, TaskError> {
        let bytes = self.outcome()?;
        decode_shared_value(bytes).map_err(|e| TaskError::Decode {
            ctx: Box::new(self.context(String::new())),
            what: DecodeTarget::Result,
            message: e.to_string(),
        })
    }

    fn context(&self, stderr_tail: String) -> TaskContext {
        TaskContext {
            id: self.id,
            task: self.task.clone(),
            worker: self.worker.clone(),
            stderr_tail,
        }
    }

    /// The value decoded as the output of `task`, or the task's error.
    pub fn decode_as<T: Task>(&self, _task: T) -> Result<T::Output, TaskError> {
        self.decode()
    }
}
