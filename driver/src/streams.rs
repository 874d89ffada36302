//! `map`, `imap` and `imap_unordered` (achilles' names, `multiprocessing.Pool`'s semantics) on
//! every [`Dispatcher`].

use blitzen_protocol::ids::DriverTaskId;
use std::marker::PhantomData;
use std::sync::mpsc;

use blitzen_common::{Task, TaskError};
use serde::de::DeserializeOwned;

use crate::dispatcher::{Backend, Dispatcher};
use crate::error::DispatchError;
use crate::results::{Fetch, TaskId};
use crate::table::Subscriber;

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
    pub fn as_completed<O: DeserializeOwned>(&self, ids: &[TaskId<O>]) -> ImapUnordered<'_, B, O> {
        let (tx, done) = mpsc::channel();
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        let tx = Subscriber::Blocking(tx);
        self.table.subscribe(&tasks, &tx);
        let waiting = ids.iter().map(|id| (id.task(), *id)).collect();
        ImapUnordered { dispatcher: self, waiting, done, _output: PhantomData, _tx: tx }
    }
}

impl<B: Backend> Dispatcher<B> {
    /// The task numbers of `ids` in the order the tasks finish, without fetching them: for
    /// bindings to other languages (the Python package's `imap_unordered`), which need to wait
    /// in slices. Rust programs use [`as_completed`](Self::as_completed).
    pub fn completions<O>(&self, ids: &[TaskId<O>]) -> Completions {
        let (tx, done) = mpsc::channel();
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        let tx = Subscriber::Blocking(tx);
        self.table.subscribe(&tasks, &tx);
        Completions { waiting: tasks.into_iter().collect(), done, _tx: tx }
    }
}

/// What [`Dispatcher::completions`] returns: the tasks still awaited, and the channel their
/// numbers arrive on as they finish.
#[derive(Debug)]
pub struct Completions {
    waiting: std::collections::HashSet<DriverTaskId>,
    done: mpsc::Receiver<DriverTaskId>,
    /// Keeps the channel open while tasks are awaited.
    _tx: Subscriber,
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
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.done.recv_timeout(left) {
                Ok(id) if self.waiting.remove(&id) => return Completion::Finished(id.get()),
                Ok(_) => continue,
                Err(_) => return Completion::Waiting,
            }
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
    /// Tasks not yielded yet.
    waiting: std::collections::HashMap<DriverTaskId, TaskId<O>>,
    /// Finished tasks, sent by the result table.
    done: mpsc::Receiver<DriverTaskId>,
    _output: PhantomData<fn() -> O>,
    /// Keeps the channel open while tasks are outstanding.
    _tx: Subscriber,
}

impl<B: Backend, O: DeserializeOwned> Iterator for ImapUnordered<'_, B, O> {
    type Item = (TaskId<O>, Result<O, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.waiting.is_empty() {
            // Every task settles eventually (at worst as cancelled at shutdown), so this ends.
            let task = self.done.recv().ok()?;
            let Some(id) = self.waiting.remove(&task) else { continue };
            let result = match self.dispatcher.get_results_with(&[id], Fetch::default()) {
                Ok(mut one) => one.pop()?,
                Err(e) => Err(fetched_elsewhere(task, e)),
            };
            return Some((id, result));
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.waiting.len(), Some(self.waiting.len()))
    }
}

impl<B: Backend, O> Drop for ImapUnordered<'_, B, O> {
    fn drop(&mut self) {
        let tasks: Vec<DriverTaskId> = self.waiting.keys().copied().collect();
        self.dispatcher.table.unsubscribe(&tasks);
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
