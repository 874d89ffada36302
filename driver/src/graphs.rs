//! The graph face of a dispatcher: tasks whose arguments stand for other tasks' results
//! ([`Dispatcher::submit`]) and tasks that run after others ([`Dispatcher::after`]). The waiting
//! itself is the result table's (`table::graph`): a task waits there, unsent, until its inputs
//! are in.

use blitzen_common::Task;
use blitzen_common::inputs::{Accepts, Input, Part, Parts};
use blitzen_protocol::Outcome;
use blitzen_protocol::ids::DriverTaskId;
use bytes::Bytes;

use crate::dispatcher::{Backend, Dispatcher, NamedTask};
use crate::error::DispatchError;
use crate::results::{Predecessor, RunOptions, TaskId};

impl<B: Backend> Dispatcher<B> {
    /// Submits `task` whose arguments may stand for other tasks' results: anywhere a value of
    /// a type goes, the handle of a task with that output type may stand — `d.submit(merge,
    /// (a, b))` for `fn merge(x: Data, y: Data)`, `a` a `Data` or a `TaskId<Data>`; the compiler
    /// checks the types. The task waits (in this dispatcher, not on a worker) until those
    /// tasks have results, and runs with them. If one fails, it does not run and ends
    /// [`TaskError::DependencyFailed`](crate::TaskError::DependencyFailed) naming that first
    /// failed task, as does every task that waits on it, at once.
    ///
    /// A handle of another dispatcher, or of a task whose result was fetched (and so is no
    /// longer kept), is an error here, and nothing is submitted. (Write `String::from("…")`
    /// rather than `"…".into()` among the arguments: `into` cannot tell which of a value or a
    /// handle is meant.)
    pub fn submit<T: Accepts<P>, P>(
        &self,
        task: T,
        inputs: P,
    ) -> Result<TaskId<T::Output>, DispatchError> {
        self.submit_with(task, inputs, RunOptions::default())
    }

    /// [`submit`](Self::submit) with options.
    pub fn submit_with<T: Accepts<P>, P>(
        &self,
        task: T,
        inputs: P,
        options: RunOptions,
    ) -> Result<TaskId<T::Output>, DispatchError> {
        self.submit_parts(task, T::parts(inputs), options, &[])
    }

    /// A value many tasks take, encoded once: its [`Shared`] handle stands where a value of its
    /// type goes among the arguments of [`submit`](Self::submit), as a task's handle does,
    /// for any number of tasks. The dispatcher keeps the one encoding for as long as a handle
    /// or a task not yet sent holds it: dropping the last handle frees it once no task needs it.
    ///
    /// Each task still receives the bytes (on one machine through its worker's pipe, on a
    /// cluster over the network); what `share` spares is encoding the value, and holding it,
    /// once per task. A task of one argument gets the very bytes, with no copy in this
    /// process.
    pub fn share<T: serde::Serialize>(&self, value: &T) -> Result<Shared<T>, DispatchError> {
        let bytes = blitzen_common::task::encode_value(value)
            .map_err(|e| DispatchError::Unencodable(e.to_string()))?;
        Ok(self.share_encoded(bytes))
    }

    /// [`share`](Self::share) of a value already encoded as its tasks decode it (for bindings
    /// to other languages: the Python package shares pickles); taken as it is.
    pub fn share_encoded<T>(&self, bytes: bytes::Bytes) -> Shared<T> {
        let stored = self.backend.share(&bytes);
        let inner = std::sync::Arc::new(SharedValue { bytes, stored });
        Shared { inner, _type: std::marker::PhantomData }
    }

    /// Tasks to run only once every one of `ids` has succeeded, without taking their results:
    /// `d.after(&batch).run(report, args)`. If one of them fails (an error, a crash, a
    /// timeout, a cancel…), such a task does not run and ends
    /// [`TaskError::DependencyFailed`](crate::TaskError::DependencyFailed) naming it.
    pub fn after<O>(&self, ids: &[TaskId<O>]) -> After<'_, B> {
        After { dispatcher: self, after: Vec::new() }.after(ids)
    }

    /// Tasks to run once every one of `ids` has ended, whatever the outcome (a clean-up after
    /// a batch): `d.after_any(&batch).run(cleanup, args)`.
    pub fn after_any<O>(&self, ids: &[TaskId<O>]) -> After<'_, B> {
        After { dispatcher: self, after: Vec::new() }.after_any(ids)
    }

    /// What `submit_with` and [`After`] share: a task whose arguments are `parts`, run after
    /// `after`. Refused only when it waits for a task of another dispatcher or one fetched.
    pub(crate) fn submit_parts<T: Task>(
        &self,
        _task: T,
        parts: Parts,
        options: RunOptions,
        after: &[Predecessor],
    ) -> Result<TaskId<T::Output>, DispatchError> {
        let task =
            NamedTask { name: T::NAME, signature: T::SIGNATURE, fingerprint: T::FINGERPRINT };
        let options = if T::NEEDS.is_plain() {
            options
        } else {
            RunOptions { needs: T::NEEDS.overridden_by(&options.needs), ..options }
        };
        let shown = options.label.unwrap_or(T::NAME);
        self.submit_named_parts(task, shown, parts, options, after)
    }

    /// Submits a task known by name only whose arguments are `parts`, some of which may stand
    /// for other tasks' results (made with [`Input::part`](blitzen_common::inputs::Input) of
    /// a handle, such as [`id_of`](Self::id_of) gives): [`run_named`](Self::run_named) with
    /// inputs, for bindings to other languages. Refused as [`submit`](Self::submit) is.
    pub fn run_named_parts(
        &self,
        task: NamedTask,
        parts: Parts,
        options: RunOptions,
    ) -> Result<TaskId, DispatchError> {
        let shown = options.label.unwrap_or(task.name);
        self.submit_named_parts(task, shown, parts, options, &[])
    }

    /// What every submission of parts comes to, shown as `shown`.
    fn submit_named_parts<O>(
        &self,
        task: NamedTask,
        shown: &'static str,
        parts: Parts,
        options: RunOptions,
        after: &[Predecessor],
    ) -> Result<TaskId<O>, DispatchError> {
        let unencodable = parts.parts.iter().find_map(|p| match p {
            Part::Unencodable(message) => Some(message.clone()),
            _ => None,
        });
        let independent = after.is_empty()
            && !parts.parts.iter().any(|p| matches!(p, Part::Result { .. } | Part::Shared { .. }));
        if unencodable.is_some() || independent {
            // Nothing to wait for: sent at once, as it always was.
            let (id, closed) = self.table.register(shown, task.signature);
            if closed {
                return Ok(id);
            }
            match unencodable {
                Some(message) => self.table.settle(id.task(), Outcome::BadArguments { message }),
                None => {
                    let values: Vec<Bytes> = (parts.parts.into_iter())
                        .map(|p| match p {
                            Part::Value(bytes) => bytes,
                            _ => Bytes::new(),
                        })
                        .collect();
                    let args = Parts::splice(&parts.framing, &values);
                    self.send(task, id.task(), args, &options);
                }
            }
            return Ok(id);
        }
        let call = match self.call(task, DriverTaskId::new(0), Bytes::new(), &options) {
            Ok(call) => call,
            Err(outcome) => {
                let (id, closed) = self.table.register(shown, task.signature);
                if !closed {
                    self.table.settle(id.task(), outcome);
                }
                return Ok(id);
            }
        };
        let held = self.backend.holds_inputs();
        let (id, ready) = self.table.register_waiting(shown, call, parts, after, held)?;
        if let Some(call) = ready
            && let Err(outcome) = self.backend.submit(call)
        {
            self.table.settle(id.task(), outcome);
        }
        Ok(id)
    }
}

/// A value shared by many tasks, encoded once: see [`Dispatcher::share`]. Cloning the handle
/// does not copy the value.
pub struct Shared<T> {
    inner: std::sync::Arc<SharedValue>,
    _type: std::marker::PhantomData<fn() -> T>,
}

/// What every handle of one shared value holds.
struct SharedValue {
    bytes: Bytes,
    /// Its number where the backend stores it, and what tells the backend it is no longer
    /// shared; `None`: each task gets the bytes.
    stored: Option<crate::call::Stored>,
}

impl Drop for SharedValue {
    fn drop(&mut self) {
        if let Some(stored) = &self.stored {
            (stored.unshare)(stored.id);
        }
    }
}

impl<T> Shared<T> {
    /// The size of its encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.inner.bytes.len()
    }

    fn as_part(&self) -> Part {
        match &self.inner.stored {
            Some(stored) => Part::Shared { id: stored.id, bytes: self.inner.bytes.clone() },
            None => Part::Value(self.inner.bytes.clone()),
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), _type: std::marker::PhantomData }
    }
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared<{}>({} bytes)", std::any::type_name::<T>(), self.inner.bytes.len())
    }
}

/// A shared value's handle stands where a value of its type goes among the arguments of
/// [`Dispatcher::submit`].
impl<T> Input<T> for &Shared<T> {
    fn part(self) -> Part {
        self.as_part()
    }
}

impl<T> Input<T> for Shared<T> {
    fn part(self) -> Part {
        self.as_part()
    }
}

/// Tasks to submit after others: see [`Dispatcher::after`] and [`Dispatcher::after_any`].
#[derive(Debug)]
#[must_use = "nothing is submitted until `run` or `submit`"]
pub struct After<'a, B: Backend> {
    dispatcher: &'a Dispatcher<B>,
    after: Vec<Predecessor>,
}

impl<B: Backend> After<'_, B> {
    /// Also after every one of `ids` has succeeded.
    pub fn after<O>(mut self, ids: &[TaskId<O>]) -> Self {
        self.after.extend(ids.iter().map(|id| Predecessor::of(id, false)));
        self
    }

    /// Also after every one of `ids` has ended, whatever the outcome.
    pub fn after_any<O>(mut self, ids: &[TaskId<O>]) -> Self {
        self.after.extend(ids.iter().map(|id| Predecessor::of(id, true)));
        self
    }

    /// Submits `task` with `args` to run after those tasks. A task of another dispatcher, or
    /// one whose result was fetched (its outcome is no longer known; `after_any` accepts it),
    /// is an error, and nothing is submitted.
    pub fn run<T: Task>(&self, task: T, args: T::Args) -> Result<TaskId<T::Output>, DispatchError> {
        self.run_with(task, args, RunOptions::default())
    }

    /// [`run`](Self::run) with options.
    pub fn run_with<T: Task>(
        &self,
        task: T,
        args: T::Args,
        options: RunOptions,
    ) -> Result<TaskId<T::Output>, DispatchError> {
        let args = match blitzen_common::task::encode_value(&args) {
            Ok(args) => Part::Value(args),
            Err(e) => Part::Unencodable(e.to_string()),
        };
        let parts = Parts::single(args);
        self.dispatcher.submit_parts(task, parts, options, &self.after)
    }

    /// [`Dispatcher::submit`], after those tasks.
    pub fn submit<T: Accepts<P>, P>(
        &self,
        task: T,
        inputs: P,
    ) -> Result<TaskId<T::Output>, DispatchError> {
        self.submit_with(task, inputs, RunOptions::default())
    }

    /// [`Dispatcher::submit_with`], after those tasks.
    pub fn submit_with<T: Accepts<P>, P>(
        &self,
        task: T,
        inputs: P,
        options: RunOptions,
    ) -> Result<TaskId<T::Output>, DispatchError> {
        let parts = T::parts(inputs);
        self.dispatcher.submit_parts(task, parts, options, &self.after)
    }
}
