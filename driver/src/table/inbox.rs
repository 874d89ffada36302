//! [`Inbox`]: where the result table tells one stream of results which of its tasks finished,
//! in the order they finish. A blocking iterator waits on its condition variable; an async
//! stream leaves its waker. Either takes every task that finished since its last look at once.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Instant;

use blitzen_protocol::ids::DriverTaskId;

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct InboxState {
    finished: Vec<DriverTaskId>,
    /// The async reader's, while it waits.
    waker: Option<Waker>,
    /// Set by [`Inbox::interrupt`]: the blocking reader's wait ends, with nothing.
    interrupted: bool,
}

impl Inbox {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table's side: `tasks` finished; wakes the reader.
    pub(crate) fn deliver(&self, tasks: &[DriverTaskId]) {
        if tasks.is_empty() {
            return;
        }
        let waker = {
            let mut st = self.lock();
            st.finished.extend_from_slice(tasks);
            st.waker.take()
        };
        self.arrived.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the blocking reader's present or next wait, with nothing.
    pub(crate) fn interrupt(&self) {
        self.lock().interrupted = true;
        self.arrived.notify_all();
    }

    /// Waits until a task has finished, or until `deadline`; takes every finished task (none
    /// when the deadline passed first, or the wait was interrupted).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Vec<DriverTaskId> {
        self.wait_or_interrupt(deadline).unwrap_or_default()
    }

    /// [`wait`](Self::wait), telling an interrupt apart: `None`.
    pub(crate) fn wait_or_interrupt(&self, deadline: Option<Instant>) -> Option<Vec<DriverTaskId>> {
        let mut st = self.lock();
        while st.finished.is_empty() {
            if std::mem::take(&mut st.interrupted) {
                return None;
            }
            st = match deadline {
                None => self.arrived.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    self.arrived.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
        Some(std::mem::take(&mut st.finished))
    }

    /// Takes every finished task; when there is none, `waker` is woken when one finishes.
    pub(crate) fn poll_take(&self, waker: &Waker) -> Poll<Vec<DriverTaskId>> {
        let mut st = self.lock();
        if st.finished.is_empty() {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                st.waker = Some(waker.clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(std::mem::take(&mut st.finished))
    }
}

/// Finished tasks of one batch, grouped by inbox so that each inbox is told once.
#[derive(Debug, Default)]
pub(crate) struct Deliveries(Vec<(Arc<Inbox>, Vec<DriverTaskId>)>);

impl Deliveries {
    pub(crate) fn add(&mut self, inbox: Arc<Inbox>, task: DriverTaskId) {
        match self.0.iter_mut().find(|(i, _)| Arc::ptr_eq(i, &inbox)) {
            Some((_, tasks)) => tasks.push(task),
            None => self.0.push((inbox, vec![task])),
        }
    }

    /// Tells each inbox; called once the table's lock is released.
    pub(crate) fn deliver(self) {
        for (inbox, tasks) in self.0 {
            inbox.deliver(&tasks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_async_reader_is_woken_once_and_takes_everything() {
        let inbox = Inbox::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(inbox.poll_take(&waker).is_pending());
        let mut batch = Deliveries::default();
        for seq in 1..=3 {
            batch.add(inbox.clone(), DriverTaskId::new(seq));
        }
        batch.deliver();
        inbox.deliver(&[DriverTaskId::new(4)]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once: the waker is taken");
        let taken = inbox.poll_take(&waker);
        assert_eq!(taken, Poll::Ready((1..=4).map(DriverTaskId::new).collect()));
    }

    #[test]
    fn a_blocking_reader_waits_for_a_delivery_or_its_deadline() {
        let inbox = Inbox::new();
        let started = Instant::now();
        assert!(inbox.wait(Some(started + Duration::from_millis(30))).is_empty());
        assert!(started.elapsed() >= Duration::from_millis(30));
        let sender = std::thread::spawn({
            let inbox = inbox.clone();
            move || inbox.deliver(&[DriverTaskId::new(7)])
        });
        assert_eq!(inbox.wait(None), vec![DriverTaskId::new(7)]);
        sender.join().expect("the delivering thread");
    }
}
