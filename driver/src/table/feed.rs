//! [`OutputFeed`]: the lines streamed tasks print, from the backend to the dispatcher's
//! consumer, bounded, with a count per task of the lines it had to drop — added into the task's
//! result when it comes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::{Finished, Lines, Unstreamed};

/// Bytes of lines a dispatcher holds for its consumer; lines beyond are dropped and counted.
pub const OUTPUT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Lines from the backend, waiting for the consumer, and the count of those dropped by task.
#[derive(Debug, Default)]
pub(crate) struct OutputFeed {
    state: Mutex<FeedState>,
    ready: Condvar,
    /// Whether `FeedState::dropped` may be non-empty: results look only then.
    dropped_any: AtomicBool,
}

#[derive(Debug, Default)]
struct FeedState {
    queue: VecDeque<(DriverTaskId, Option<String>, Lines)>,
    bytes: usize,
    /// Lines not kept, by task number and stream.
    dropped: Unstreamed<DriverTaskId>,
    /// Whether the consumer is handing on lines it took.
    in_hand: bool,
    /// Futures waiting for the lines to be handed on ([`OutputFeed::poll_settled`]).
    settle_wakers: Vec<std::task::Waker>,
    closed: bool,
}

impl OutputFeed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines of task `id`, from the backend: never waits.
    pub(crate) fn push(&self, id: DriverTaskId, host: Option<String>, lines: Lines) {
        let mut st = self.lock();
        if st.closed || st.bytes + lines.text.len() > OUTPUT_QUEUE_BYTES {
            st.dropped.count(id, lines.stream, lines.count());
            self.dropped_any.store(true, Ordering::Relaxed);
            return;
        }
        st.bytes += lines.text.len();
        st.queue.push_back((id, host, lines));
        drop(st);
        self.ready.notify_all();
    }

    /// Adds the lines of task `id` that were dropped here into its result.
    pub(crate) fn add_dropped(&self, id: DriverTaskId, run: &mut Finished) {
        if !self.dropped_any.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        st.dropped.add_into(&id, run);
        if st.dropped.is_empty() {
            self.dropped_any.store(false, Ordering::Relaxed);
        }
    }

    /// Waits up to `limit` for lines; says whether there are some. `false` at once when closed
    /// and empty.
    pub(crate) fn wait(&self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut st = self.lock();
        loop {
            if !st.queue.is_empty() {
                return true;
            }
            if st.closed {
                return false;
            }
            st = match deadline {
                None => self.ready.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.ready.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }

    /// Every line waiting, oldest first, by task.
    pub(crate) fn take(&self) -> Vec<(DriverTaskId, Option<String>, Lines)> {
        let mut st = self.lock();
        st.bytes = 0;
        st.queue.drain(..).collect()
    }

    /// [`take`](Self::take), for a consumer that then calls [`handed`](Self::handed) once it
    /// has handed them on: [`settle`](Self::settle) waits for that.
    pub(crate) fn take_in_hand(&self) -> Vec<(DriverTaskId, Option<String>, Lines)> {
        let mut st = self.lock();
        st.bytes = 0;
        st.in_hand = true;
        st.queue.drain(..).collect()
    }

    /// The consumer has handed on what it took.
    pub(crate) fn handed(&self) {
        let mut st = self.lock();
        st.in_hand = false;
        let wakers = std::mem::take(&mut st.settle_wakers);
        drop(st);
        self.ready.notify_all();
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// The async face of [`settle`](Self::settle): ready once the consumer has handed on every
    /// line that came so far (or the feed is closed); until then `waker` is woken when it has
    /// handed some on.
    pub(crate) fn poll_settled(&self, waker: &std::task::Waker) -> std::task::Poll<()> {
        let mut st = self.lock();
        if (st.queue.is_empty() && !st.in_hand) || st.closed {
            return std::task::Poll::Ready(());
        }
        if !st.settle_wakers.iter().any(|w| w.will_wake(waker)) {
            st.settle_wakers.push(waker.clone());
        }
        std::task::Poll::Pending
    }

    /// Waits (at most `limit`) until the consumer has handed on every line that came so far:
    /// a task's lines are out before its result is returned.
    pub(crate) fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        while (!st.queue.is_empty() || st.in_hand) && !st.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self.ready.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// No more lines will come: a waiting consumer returns once it has taken what is left.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let wakers = std::mem::take(&mut st.settle_wakers);
        drop(st);
        self.ready.notify_all();
        wakers.into_iter().for_each(std::task::Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::StdStream;
    use bytes::Bytes;
    use std::sync::Arc;

    fn lines(text: &'static str) -> Lines {
        Lines { stream: StdStream::Stdout, text: Bytes::from_static(text.as_bytes()) }
    }

    #[test]
    fn lines_past_the_queue_bound_are_counted_into_the_result() {
        let feed = OutputFeed::default();
        let big = Bytes::from(vec![b'x'; OUTPUT_QUEUE_BYTES]);
        feed.push(DriverTaskId::new(1), None, Lines { stream: StdStream::Stdout, text: big });
        feed.push(DriverTaskId::new(1), None, lines("a\nb\n"));
        feed.push(DriverTaskId::new(2), None, Lines { stream: StdStream::Stderr, ..lines("c\n") });
        feed.push(DriverTaskId::new(2), None, lines("d"));
        let mut run = Finished::unstarted(blitzen_protocol::Outcome::UnknownTask);
        feed.add_dropped(DriverTaskId::new(1), &mut run);
        assert_eq!((run.stdout.unstreamed, run.stderr.unstreamed), (2, 0));
        let mut run = Finished::unstarted(blitzen_protocol::Outcome::UnknownTask);
        feed.add_dropped(DriverTaskId::new(2), &mut run);
        assert_eq!((run.stdout.unstreamed, run.stderr.unstreamed), (1, 1));
        assert!(feed.wait(Some(Duration::ZERO)));
        assert_eq!(feed.take().len(), 1);
        feed.push(DriverTaskId::new(3), None, lines("e\n"));
        assert_eq!(feed.take().len(), 1, "taken lines make room");
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_lines_and_by_the_close() {
        let feed = Arc::new(OutputFeed::default());
        let waiter = {
            let feed = feed.clone();
            std::thread::spawn(move || feed.wait(None))
        };
        feed.push(DriverTaskId::new(1), Some("h".into()), lines("x\n"));
        assert!(waiter.join().expect("waiter"));
        assert_eq!(feed.take()[0].1.as_deref(), Some("h"));
        let waiter = {
            let feed = feed.clone();
            std::thread::spawn(move || feed.wait(None))
        };
        feed.close();
        assert!(!waiter.join().expect("waiter"), "closed and empty");
        assert!(!feed.wait(Some(Duration::from_secs(5))), "at once once closed");
    }
}
