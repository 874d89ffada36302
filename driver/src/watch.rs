//! [`Watch`]: the tasks a binding to another language watches as they finish — the Python
//! package's `Executor`, whose tasks come one at a time and whose futures are settled by a
//! thread of its own. Tasks join and leave the watch while that thread waits on it, and a wait
//! can be interrupted (the executor shuts down). Rust programs use
//! [`as_completed`](crate::Dispatcher::as_completed) or the async face.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use blitzen_protocol::ids::DriverTaskId;

use crate::dispatcher::{Backend, Dispatcher};
use crate::results::TaskId;
use crate::table::{Inbox, ResultTable, TaskSet};

/// Tasks watched as they finish: see the module's text. Clones share the watch.
#[derive(Debug, Clone)]
pub struct Watch {
    inbox: Arc<Inbox>,
    /// Tasks watched and not reported yet.
    watched: Arc<Mutex<TaskSet>>,
}

impl<B: Backend> Dispatcher<B> {
    /// A watch of no task yet.
    pub fn watch(&self) -> Watch {
        Watch { inbox: Inbox::new(), watched: Arc::default() }
    }

    /// Adds `ids` to `watch`: each is reported once it finishes (at the next wait, if it has).
    pub fn watch_more<O>(&self, watch: &Watch, ids: &[TaskId<O>]) {
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        watch.add(&self.table, &tasks);
    }

    /// Takes `ids` out of `watch`: they are not reported (another thread waits for them).
    pub fn unwatch<O>(&self, watch: &Watch, ids: &[TaskId<O>]) {
        let tasks: Vec<DriverTaskId> = ids.iter().map(TaskId::task).collect();
        watch.remove(&self.table, &tasks);
    }
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, TaskSet> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, table: &ResultTable, tasks: &[DriverTaskId]) {
        self.lock().extend(tasks.iter().copied());
        table.subscribe(tasks, &self.inbox);
    }

    fn remove(&self, table: &ResultTable, tasks: &[DriverTaskId]) {
        let mut watched = self.lock();
        for task in tasks {
            watched.remove(task);
        }
        drop(watched);
        table.unsubscribe(tasks);
    }

    /// The numbers ([`TaskId::seq`]) of the watched tasks that finished since the last call,
    /// waiting at most `timeout` for one (empty when none did); `None` when the wait was
    /// [interrupted](Self::interrupt).
    pub fn next_within(&self, timeout: Duration) -> Option<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let finished = self.inbox.wait_or_interrupt(Some(deadline))?;
            if finished.is_empty() {
                return Some(Vec::new());
            }
            let mut watched = self.lock();
            let reported: Vec<u64> =
                (finished.into_iter()).filter(|t| watched.remove(t)).map(|t| t.get()).collect();
            if !reported.is_empty() {
                return Some(reported);
            }
        }
    }

    /// Ends the present (or next) [`next_within`](Self::next_within) at once, with nothing.
    pub fn interrupt(&self) {
        self.inbox.interrupt();
    }

    /// Tasks watched and not reported yet.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no task is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use blitzen_protocol::{Outcome, Report};

    fn done(table: &ResultTable, tasks: &[DriverTaskId]) {
        let bytes = blitzen_common::task::encode_value(&1u64).expect("encodes");
        let reports = tasks.iter().map(|&t| Report::unstarted(t, Outcome::Value(bytes.clone())));
        table.complete(reports.collect());
    }

    #[test]
    fn a_watch_reports_what_it_watches_once_and_can_be_interrupted() {
        let table = ResultTable::new();
        let tasks: Vec<DriverTaskId> =
            (0..3).map(|_| table.register::<u64>("t", "sig").0.task()).collect();
        let watch = Watch { inbox: Inbox::new(), watched: Arc::default() };
        watch.add(&table, &tasks[..2]);
        watch.remove(&table, &tasks[1..2]);
        done(&table, &tasks[..2]);
        let reported = watch.next_within(Duration::from_secs(30));
        assert_eq!(reported, Some(vec![tasks[0].get()]), "the task taken out is not reported");
        assert!(watch.is_empty());
        assert_eq!(watch.next_within(Duration::from_millis(1)), Some(vec![]), "each once");
        // A task already done is reported as it joins.
        watch.add(&table, &tasks[1..2]);
        assert_eq!(watch.next_within(Duration::from_secs(30)), Some(vec![tasks[1].get()]));
        // A wait on a task not done ends when interrupted.
        watch.add(&table, &tasks[2..]);
        let waiting = {
            let watch = watch.clone();
            std::thread::spawn(move || watch.next_within(Duration::from_secs(30)))
        };
        watch.interrupt();
        assert_eq!(waiting.join().expect("the waiting thread"), None);
        assert_eq!(watch.len(), 1, "still watched after the interrupt");
    }
}
