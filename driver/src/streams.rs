//! `map`, `imap` and `imap_unordered` (achilles' names, `multiprocessing.Pool`'s semantics) on
//! every [`Dispatcher`].

use std::collections::VecDeque;
use std::sync::Arc;

use blitzen_protocol::ids::DriverTaskId;

use blitzen_common::{Task, TaskError};
use serde::de::DeserializeOwned;

use crate::dispatcher::{Backend, Dispatcher, blocking};
use crate::error::DispatchError;
use crate::results::{Fetch, TaskId, TaskResult};
use crate::table::{ByTask, Inbox, ResultTable, TaskSet};

impl<B: Backend> Dispatcher<B> {
    /// Runs `task` on every item of `args` and returns all results, in the order of `args`
    /// (`Pool.map`). Blocks until all are done.
    pub fn map<T: Task>(
        &self,
        task: T,
        args: impl IntoIterator<Item = T::Args>,
    ) -> Result<Vec<Result<T::Output, TaskError>>, DispatchError> {
        let ids: Vec<_> = args.into_iter().map(|a| self.run(task, a)).collect();
        self.get_results(&ids)
    }

    /// Submits `task` on every item of `args` at once and yields the results in the order of
    /// `args`, each as soon as it and those before it are done (`Pool.imap`).
    pub fn imap<T: Task>(
        &self,
        task: T,
        args: impl IntoIterator<Item = T::Args>,
    ) -> Imap<'_, B, T::Output> {
        let ids: Vec<_> = args.into_iter().map(|a| self.run(task, a)).collect();
        Imap { dispatcher: self, ids: ids.into_iter() }
    }

    /// Submits `task` on every item of `args` at once and yields each result as soon as it is
    /// done, with its id (`Pool.imap_unordered`).
    pub fn imap_unordered<T: Task>(
        &self,
        task: T,
        args: impl IntoIterator<Item = T::Args>,
    ) -> ImapUnordered<'_, B, T::Output> {
        let ids: Vec<_> = args.into_iter().map(|a| self.run(task, a)).collect();
        self.as_completed(&ids)
    }

    /// Yields the results of `ids` as they complete, each with its id; removes them from the
    /// dispatcher as it goes.
    ///
    /// # Panics
    ///
    /// Iterated on the thread of a current-thread Tokio runtime, which its waits would stall:
    /// use [`completed`](Self::completed) there (see [`DispatchError::WouldStall`]).
    pub fn as_completed<O: DeserializeOwned>(&self, ids: &[TaskId<O>]) -> ImapUnordered<'_, B, O> {
        let inbox = Inbox::new();
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        self.table.subscribe(&tasks, &inbox);
        ImapUnordered { dispatcher: self, unordered: Unordered::new(ids), inbox }
    }
}

impl<B: Backend> Dispatcher<B> {
    /// The task numbers of `ids` in the order the tasks finish, without fetching them: for
    /// bindings to other languages (the Python package's `imap_unordered`), which need to wait
    /// in slices. Rust programs use [`as_completed`](Self::as_completed).
    pub fn completions<O>(&self, ids: &[TaskId<O>]) -> Completions {
        let inbox = Inbox::new();
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        self.table.subscribe(&tasks, &inbox);
        Completions { waiting: tasks.into_iter().collect(), finished: VecDeque::new(), inbox }
    }
}

/// What [`Dispatcher::completions`] returns: the tasks still awaited, and the channel their
/// numbers arrive on as they finish.
#[derive(Debug)]
pub struct Completions {
    waiting: TaskSet,
    /// Tasks taken from the inbox, not reported yet.
    finished: VecDeque<DriverTaskId>,
    inbox: Arc<Inbox>,
}

/// One wait of [`Completions::next_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The task of this number ([`TaskId::seq`]) has finished (its result is in the
    /// dispatcher).
    Finished(u64),
    /// None finished within the wait.
    Waiting,
    /// Every task has been reported.
    AllDone,
}

impl Completions {
    /// Waits at most `timeout` for the next task to finish.
    pub fn next_within(&mut self, timeout: std::time::Duration) -> Completion {
        let deadline = std::time::Instant::now() + timeout;
        while !self.waiting.is_empty() {
            while let Some(id) = self.finished.pop_front() {
                if self.waiting.remove(&id) {
                    return Completion::Finished(id.get());
                }
            }
            let finished = self.inbox.wait(Some(deadline));
            if finished.is_empty() {
                return Completion::Waiting;
            }
            self.finished.extend(finished);
        }
        Completion::AllDone
    }

    /// Tasks not reported yet.
    pub fn remaining(&self) -> usize {
        self.waiting.len()
    }
}

/// Results in submission order; see [`Dispatcher::imap`].
#[derive(Debug)]
pub struct Imap<'a, B: Backend, O> {
    dispatcher: &'a Dispatcher<B>,
    ids: std::vec::IntoIter<TaskId<O>>,
}

impl<B: Backend, O: DeserializeOwned> Iterator for Imap<'_, B, O> {
    type Item = Result<O, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.ids.next()?;
        match self.dispatcher.get_results_with(&[id], Fetch::default()) {
            Ok(mut one) => one.pop(),
            // Only if someone else fetched this id meanwhile.
            Err(e) => Some(Err(fetched_elsewhere(id.task(), e))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ids.size_hint()
    }
}

/// Results as they complete; see [`Dispatcher::imap_unordered`] and
/// [`Dispatcher::as_completed`].
#[derive(Debug)]
pub struct ImapUnordered<'a, B: Backend, O> {
    dispatcher: &'a Dispatcher<B>,
    unordered: Unordered<O>,
    /// Where the result table tells which tasks finished.
    inbox: Arc<Inbox>,
}

impl<B: Backend, O: DeserializeOwned> Iterator for ImapUnordered<'_, B, O> {
    type Item = (TaskId<O>, Result<O, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(next) = self.unordered.pop() {
                return Some(next);
            }
            if self.unordered.waiting() == 0 {
                return None;
            }
            // Every task settles eventually (at worst as cancelled at shutdown), so this ends.
            let waited = blocking("as_completed", "dispatcher.completed(&ids)", || {
                Ok(self.inbox.wait(None))
            });
            let finished = waited.unwrap_or_else(|e| panic!("{e}"));
            self.unordered.take(&self.dispatcher.table, finished);
            self.dispatcher.settle_output();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.unordered.len();
        (left, Some(left))
    }
}

impl<B: Backend, O> Drop for ImapUnordered<'_, B, O> {
    fn drop(&mut self) {
        self.unordered.unsubscribe(&self.dispatcher.table);
    }
}

/// A task that completed, and its result.
pub type CompletedResult<O> = (TaskId<O>, Result<O, TaskError>);

/// What the blocking [`ImapUnordered`] and the async [`Completed`](crate::Completed) share:
/// the tasks not yielded yet, and results taken out of the table together (one lock for all
/// the tasks that finished since the last look), yielded one by one.
#[derive(Debug)]
pub(crate) struct Unordered<O> {
    waiting: ByTask<TaskId<O>>,
    taken: VecDeque<(TaskId<O>, Option<TaskResult>)>,
}

impl<O> Unordered<O> {
    pub(crate) fn new(ids: &[TaskId<O>]) -> Self {
        Self { waiting: ids.iter().map(|id| (id.task(), *id)).collect(), taken: VecDeque::new() }
    }

    /// Takes the results of `finished` tasks that are still awaited out of `table`.
    pub(crate) fn take(&mut self, table: &ResultTable, finished: Vec<DriverTaskId>) {
        let (tasks, ids): (Vec<DriverTaskId>, Vec<TaskId<O>>) =
            finished.into_iter().filter_map(|t| Some((t, self.waiting.remove(&t)?))).unzip();
        self.taken.extend(ids.into_iter().zip(table.take_finished(&tasks)));
    }

    /// Tasks whose results were not taken yet.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Tasks not yielded yet.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len() + self.taken.len()
    }

    /// Whether results were taken and not yielded yet.
    pub(crate) fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// The table stops telling of tasks nobody waits for any more.
    pub(crate) fn unsubscribe(&self, table: &ResultTable) {
        let tasks: Vec<DriverTaskId> = self.waiting.keys().copied().collect();
        table.unsubscribe(&tasks);
    }
}

impl<O: DeserializeOwned> Unordered<O> {
    /// The next result taken, decoded.
    pub(crate) fn pop(&mut self) -> Option<CompletedResult<O>> {
        let (id, result) = self.taken.pop_front()?;
        let result = match result {
            Some(r) => r.decode(),
            None => Err(fetched_elsewhere(id.task(), DispatchError::AlreadyFetched(id.seq))),
        };
        Some((id, result))
    }
}

/// A stream's or a future's task whose result cannot be fetched: another caller took it first,
/// or the wait was refused (`e` says why).
pub(crate) fn fetched_elsewhere(task: DriverTaskId, e: DispatchError) -> TaskError {
    let reason = match e {
        DispatchError::AlreadyFetched(_) => format!("its result was taken by another caller: {e}"),
        e => e.to_string(),
    };
    TaskError::Lost {
        ctx: Box::new(blitzen_common::TaskContext {
            id: task.get(),
            task: "?".into(),
            worker: None,
            stderr_tail: String::new(),
        }),
        reason,
    }
}
