//! The async face of a dispatcher: every wait of the blocking API as a future that never blocks
//! a thread — [`Dispatcher::result`], [`Dispatcher::results`], [`Dispatcher::completed`] (a
//! `Stream`), [`Dispatcher::join_async`] — over the same result table as the blocking calls.
//!
//! A future registers its task's waker in the table; the table wakes it when the result lands
//! (or when the dispatcher shuts down and settles every pending task). A thousand pending futures
//! are a thousand wakers in a map, not a thousand threads. Results are taken out as the blocking
//! calls take them (`results` can keep them), so the two faces can be mixed.
//!
//! Dropping a future before its result leaves the task running and its result in the
//! dispatcher, like dropping a `tokio::task::JoinHandle`; `abort_on_drop()` cancels the task
//! instead (and its result is dropped when it comes), so `tokio::select!` with a timeout or a
//! client that hangs up leaves no work behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use blitzen_common::TaskError;
use blitzen_protocol::ids::DriverTaskId;
use serde::de::DeserializeOwned;

use crate::dispatcher::{Backend, Dispatcher};
use crate::error::DispatchError;
use crate::results::{TaskId, TaskResult};
use crate::streams::{CompletedResult, Unordered, fetched_elsewhere};
use crate::table::{AsyncWait, Inbox};

impl<B: Backend> Dispatcher<B> {
    /// The result of task `id`, once it is done, without blocking a thread: the async twin of
    /// `get_results(&[id])`. The result is taken out of the dispatcher. An id of another
    /// dispatcher, or one already fetched, ends the future at once with [`TaskError::Lost`]
    /// saying so.
    ///
    /// Dropped before it is ready, the future leaves the task running and its result
    /// fetchable; [`TaskFuture::abort_on_drop`] cancels it instead. When the dispatcher shuts
    /// down, a pending future ends with the task's [`TaskError::Cancelled`].
    pub fn result<O: DeserializeOwned>(&self, id: TaskId<O>) -> TaskFuture<'_, B, O> {
        TaskFuture {
            dispatcher: self,
            id,
            abort_on_drop: false,
            wait: AsyncWait::default(),
            fetched: None,
            done: false,
        }
    }

    /// The results of `ids`, in the order of `ids`, once every one is done: the async twin of
    /// [`get_results`](Self::get_results) (they are taken out). An id of another dispatcher,
    /// or one already fetched, is an error at once.
    pub fn results<O: DeserializeOwned>(&self, ids: &[TaskId<O>]) -> ResultsFuture<'_, B, O> {
        let checked = self.table.check(ids);
        ResultsFuture {
            dispatcher: self,
            ids: ids.to_vec(),
            checked: Some(checked),
            abort_on_drop: false,
            wait: AsyncWait::default(),
            fetched: None,
            done: false,
        }
    }

    /// The results of `ids` as they complete, each with its id: the async twin of
    /// [`as_completed`](Self::as_completed), a `futures::Stream` (`StreamExt::next` from the
    /// futures or tokio-stream crates, or [`Completed::next`]). Each result is taken out as it
    /// is yielded.
    pub fn completed<O: DeserializeOwned>(&self, ids: &[TaskId<O>]) -> Completed<'_, B, O> {
        let inbox = Inbox::new();
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        self.table.subscribe(&tasks, &inbox);
        Completed { dispatcher: self, unordered: Unordered::new(ids), settled: true, inbox }
    }

    /// Every result not yet fetched, in submission order, once every task is done: the async
    /// twin of [`join`](Self::join). Unlike `join` it does not shut the dispatcher down
    /// (stopping waits for the worker processes to end): new tasks can still be run, and
    /// [`shutdown`](Self::shutdown) (or dropping the dispatcher) stops it.
    pub async fn join_async(&self) -> Vec<TaskResult> {
        let results = std::future::poll_fn(|cx| self.table.poll_take_all(cx.waker())).await;
        std::future::poll_fn(|cx| self.poll_output_settled(cx)).await;
        results
    }

    /// Ready once the thread handing streamed lines on has handed on those that came so far,
    /// so a task's lines are out before its result is returned (as the blocking calls do).
    fn poll_output_settled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.hands_output_on() {
            self.table.output.poll_settled(cx.waker())
        } else {
            Poll::Ready(())
        }
    }
}

/// The result of one task, as a future: see [`Dispatcher::result`].
#[must_use = "a future does nothing unless awaited"]
#[derive(Debug)]
pub struct TaskFuture<'a, B: Backend, O> {
    dispatcher: &'a Dispatcher<B>,
    id: TaskId<O>,
    /// Cancel the task if the future is dropped before it is ready.
    abort_on_drop: bool,
    wait: AsyncWait,
    /// Its result, taken from the table, while streamed lines are still handed on.
    fetched: Option<TaskResult>,
    /// Ready was returned (or the task's result is otherwise settled for this future).
    done: bool,
}

impl<B: Backend, O> TaskFuture<'_, B, O> {
    /// Cancels the task (see [`Dispatcher::cancel`]) if this future is dropped before it is
    /// ready — by a `tokio::select!` that took another branch, a timeout, a handler whose
    /// client hung up — and drops its result when it comes.
    pub fn abort_on_drop(mut self) -> Self {
        self.abort_on_drop = true;
        self
    }
}

impl<B: Backend, O: DeserializeOwned> Future for TaskFuture<'_, B, O> {
    type Output = Result<O, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.fetched.is_none() {
            let table = &this.dispatcher.table;
            if let Err(e) = table.check(std::slice::from_ref(&this.id)) {
                this.done = true;
                return Poll::Ready(Err(fetched_elsewhere(this.id.task(), e)));
            }
            let mut results = ready!(table.poll_fetch(
                std::slice::from_ref(&this.id),
                true,
                &mut this.wait,
                cx.waker()
            ));
            this.fetched = results.pop();
        }
        ready!(this.dispatcher.poll_output_settled(cx));
        this.done = true;
        match this.fetched.take() {
            Some(result) => Poll::Ready(result.decode()),
            None => Poll::Ready(Err(fetched_elsewhere(
                this.id.task(),
                DispatchError::AlreadyFetched(this.id.seq),
            ))),
        }
    }
}

impl<B: Backend, O> Drop for TaskFuture<'_, B, O> {
    fn drop(&mut self) {
        if self.abort_on_drop && !self.done && self.fetched.is_none() {
            abort(self.dispatcher, &[self.id.task()]);
        }
    }
}

/// The results of several tasks, in order, as a future: see [`Dispatcher::results`].
#[must_use = "a future does nothing unless awaited"]
#[derive(Debug)]
pub struct ResultsFuture<'a, B: Backend, O> {
    dispatcher: &'a Dispatcher<B>,
    ids: Vec<TaskId<O>>,
    /// Whether the ids were all this dispatcher's and unfetched when the wait began; taken at
    /// the first poll.
    checked: Option<Result<(), DispatchError>>,
    abort_on_drop: bool,
    wait: AsyncWait,
    /// The results, taken from the table, while streamed lines are still handed on.
    fetched: Option<Vec<TaskResult>>,
    done: bool,
}

impl<B: Backend, O> ResultsFuture<'_, B, O> {
    /// Cancels the tasks not finished yet if this future is dropped before it is ready, and
    /// drops their results when they come (see [`TaskFuture::abort_on_drop`]).
    pub fn abort_on_drop(mut self) -> Self {
        self.abort_on_drop = true;
        self
    }
}

impl<B: Backend, O: DeserializeOwned> Future for ResultsFuture<'_, B, O> {
    type Output = Result<Vec<Result<O, TaskError>>, DispatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(Err(e)) = this.checked.take() {
            this.done = true;
            return Poll::Ready(Err(e));
        }
        if this.fetched.is_none() {
            let table = &this.dispatcher.table;
            let results = ready!(table.poll_fetch(&this.ids, true, &mut this.wait, cx.waker()));
            this.fetched = Some(results);
        }
        ready!(this.dispatcher.poll_output_settled(cx));
        this.done = true;
        let results = this.fetched.take().unwrap_or_default();
        Poll::Ready(Ok(results.iter().map(TaskResult::decode).collect()))
    }
}

impl<B: Backend, O> Drop for ResultsFuture<'_, B, O> {
    fn drop(&mut self) {
        if self.abort_on_drop && !self.done && self.fetched.is_none() {
            let tasks: Vec<DriverTaskId> = self.ids.iter().map(TaskId::task).collect();
            abort(self.dispatcher, &tasks);
        }
    }
}

/// Cancels `tasks` of an abandoned future, and drops their results when they come.
fn abort<B: Backend>(dispatcher: &Dispatcher<B>, tasks: &[DriverTaskId]) {
    let unfinished: Vec<DriverTaskId> =
        tasks.iter().copied().filter(|&t| dispatcher.table.is_pending(t)).collect();
    for &task in tasks {
        dispatcher.table.discard(task);
    }
    if !unfinished.is_empty() {
        dispatcher.backend.cancel(unfinished);
    }
}

/// Results as they complete, as a `Stream`: see [`Dispatcher::completed`].
#[must_use = "a stream does nothing unless polled"]
#[derive(Debug)]
pub struct Completed<'a, B: Backend, O> {
    dispatcher: &'a Dispatcher<B>,
    unordered: Unordered<O>,
    /// Whether the lines streamed before the results taken were handed on.
    settled: bool,
    /// Where the result table tells which tasks finished.
    inbox: Arc<Inbox>,
}

impl<B: Backend, O: DeserializeOwned> Completed<'_, B, O> {
    /// The next result to complete, with its id; `None` once every task was yielded.
    pub async fn next(&mut self) -> Option<CompletedResult<O>> {
        std::future::poll_fn(|cx| self.poll_next_result(cx)).await
    }

    /// Tasks not yielded yet.
    pub fn remaining(&self) -> usize {
        self.unordered.len()
    }

    fn poll_next_result(&mut self, cx: &mut Context<'_>) -> Poll<Option<CompletedResult<O>>> {
        loop {
            if self.unordered.has_taken() {
                if !self.settled {
                    ready!(self.dispatcher.poll_output_settled(cx));
                    self.settled = true;
                }
                return Poll::Ready(self.unordered.pop());
            }
            if self.unordered.waiting() == 0 {
                return Poll::Ready(None);
            }
            let finished = ready!(self.inbox.poll_take(cx.waker()));
            self.unordered.take(&self.dispatcher.table, finished);
            self.settled = false;
        }
    }
}

impl<B: Backend, O: DeserializeOwned> futures_core::Stream for Completed<'_, B, O> {
    type Item = CompletedResult<O>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_result(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.unordered.len(), Some(self.unordered.len()))
    }
}

impl<B: Backend, O> Drop for Completed<'_, B, O> {
    fn drop(&mut self) {
        self.unordered.unsubscribe(&self.dispatcher.table);
    }
}
