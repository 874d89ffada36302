//! What tasks print, while they run: [`Output`] says what a dispatcher does with it.
//!
//! By default ([`Output::Capture`]) a task's stdout and stderr reach the driver with its result
//! (its [`TaskResult`](crate::TaskResult)`.run.stdout`). With any other choice the dispatcher's
//! tasks are *streamed*: their workers send each line as it is printed (whole lines; a long one
//! cut at 16 KiB), the lines of a task come before its result, and the result still carries
//! the captured output in full.
//!
//! Streaming is bounded at every hop: a worker streams [`STREAM_BURST`] (256 KiB) of a task's
//! lines at once and [`STREAM_RATE`] (64 KiB/s) past that, a server sends a driver 4 MiB at
//! once and 1 MiB/s past that, and a dispatcher holds at most [`OUTPUT_QUEUE_BYTES`] of lines
//! its consumer has not taken. What is beyond is dropped and counted, and the count is in the
//! task's result ([`Captured::unstreamed`](blitzen_protocol::Captured::unstreamed)).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blitzen_protocol::{Finished, Lines, StdStream};
use bytes::Bytes;

use crate::results::TaskId;
use crate::table::ResultTable;

pub use blitzen_common::worker::{STREAM_BURST, STREAM_RATE};

/// What a dispatcher does with what its tasks print while they run
/// ([`Dispatcher::with_output`](crate::Dispatcher::with_output)).
#[derive(Clone, Default)]
pub enum Output {
    /// Kept with each task's result only (the default).
    #[default]
    Capture,
    /// Each line written to this process's stdout or stderr (as the task wrote it) as it comes,
    /// prefixed with the task's number and, on a cluster, its host: `[task 12 on node3] `.
    Stream,
    /// Each batch of lines handed to this function as it comes, on a thread of the
    /// dispatcher's.
    Handler(Arc<dyn Fn(&OutputLines) + Send + Sync>),
    /// Kept for an [`OutputReader`]
    /// ([`Dispatcher::output_reader`](crate::Dispatcher::output_reader)) to take: bindings to
    /// other languages print them themselves.
    Collect,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Output::Capture => "Capture",
            Output::Stream => "Stream",
            Output::Handler(_) => "Handler(..)",
            Output::Collect => "Collect",
        })
    }
}

/// Lines a running task printed: one or more, each ending with `\n` (but perhaps the task's
/// last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLines {
    /// The task.
    pub task: TaskId,
    /// The host of the agent running it, on a cluster.
    pub host: Option<String>,
    /// Its stdout or its stderr.
    pub stream: StdStream,
    /// The lines.
    pub text: Bytes,
}

impl OutputLines {
    /// The lines as text (invalid UTF-8 replaced).
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

/// The lines a dispatcher with [`Output::Collect`] holds, for whoever takes them. A task's lines
/// are there before its result is.
#[derive(Debug, Clone)]
pub struct OutputReader {
    pub(crate) table: Arc<ResultTable>,
}

impl OutputReader {
    /// Waits up to `limit` (`None`: as long as it takes) for lines; says whether there are
    /// some. `false` at once once the dispatcher has shut down and every line was taken.
    pub fn wait(&self, limit: Option<Duration>) -> bool {
        self.table.output.wait(limit)
    }

    /// Every line not taken yet, oldest first.
    pub fn take(&self) -> Vec<OutputLines> {
        let origin = self.table.origin();
        (self.table.output.take().into_iter())
            .map(|(seq, host, lines)| OutputLines {
                task: TaskId::new(origin, seq),
                host,
                stream: lines.stream,
                text: lines.text,
            })
            .collect()
    }
}

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
    queue: VecDeque<(u64, Option<String>, Lines)>,
    bytes: usize,
    /// Lines not kept, by task number and stream.
    dropped: HashMap<u64, [u64; 2]>,
    /// Whether the consumer is handing on lines it took.
    in_hand: bool,
    closed: bool,
}

fn index(stream: StdStream) -> usize {
    match stream {
        StdStream::Stdout => 0,
        StdStream::Stderr => 1,
    }
}

impl OutputFeed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines of task `seq`, from the backend: never waits.
    pub(crate) fn push(&self, seq: u64, host: Option<String>, lines: Lines) {
        let mut st = self.lock();
        if st.closed || st.bytes + lines.text.len() > OUTPUT_QUEUE_BYTES {
            st.dropped.entry(seq).or_default()[index(lines.stream)] += lines.count();
            self.dropped_any.store(true, Ordering::Relaxed);
            return;
        }
        st.bytes += lines.text.len();
        st.queue.push_back((seq, host, lines));
        drop(st);
        self.ready.notify_all();
    }

    /// Adds the lines of task `seq` that were dropped here into its result.
    pub(crate) fn add_dropped(&self, seq: u64, run: &mut Finished) {
        if !self.dropped_any.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        if let Some([stdout, stderr]) = st.dropped.remove(&seq) {
            run.stdout.unstreamed += stdout;
            run.stderr.unstreamed += stderr;
        }
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

    /// Every line waiting, oldest first, by task number.
    pub(crate) fn take(&self) -> Vec<(u64, Option<String>, Lines)> {
        let mut st = self.lock();
        st.bytes = 0;
        st.queue.drain(..).collect()
    }

    /// [`take`](Self::take), for a consumer that then calls [`handed`](Self::handed) once it
    /// has handed them on: [`settle`](Self::settle) waits for that.
    pub(crate) fn take_in_hand(&self) -> Vec<(u64, Option<String>, Lines)> {
        let mut st = self.lock();
        st.bytes = 0;
        st.in_hand = true;
        st.queue.drain(..).collect()
    }

    /// The consumer has handed on what it took.
    pub(crate) fn handed(&self) {
        self.lock().in_hand = false;
        self.ready.notify_all();
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
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Writes lines to this process's stdout or stderr, each prefixed with its task and host.
pub(crate) fn print_prefixed(seq: u64, host: Option<&str>, lines: &Lines) {
    let text = prefixed(seq, host, &lines.text);
    // A closed stdout loses the lines, as it would lose a local program's.
    let _ = match lines.stream {
        StdStream::Stdout => std::io::stdout().lock().write_all(&text),
        StdStream::Stderr => std::io::stderr().lock().write_all(&text),
    };
}

/// Each line of `text` with `[task 12 on host] ` before it, the last ending with `\n` too.
fn prefixed(seq: u64, host: Option<&str>, text: &[u8]) -> Vec<u8> {
    let prefix = match host {
        Some(host) => format!("[task {seq} on {host}] "),
        None => format!("[task {seq}] "),
    };
    let mut out = Vec::with_capacity(text.len() + 16 * prefix.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    if out.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_prefixed_with_its_task_and_host() {
        assert_eq!(
            prefixed(12, Some("node3"), b"a\nb"),
            b"[task 12 on node3] a\n[task 12 on node3] b\n"
        );
        assert_eq!(prefixed(4, None, b"one\n"), b"[task 4] one\n");
        assert!(prefixed(4, None, b"").is_empty());
    }

    fn lines(text: &'static str) -> Lines {
        Lines { stream: StdStream::Stdout, text: Bytes::from_static(text.as_bytes()) }
    }

    #[test]
    fn lines_past_the_queue_bound_are_counted_into_the_result() {
        let feed = OutputFeed::default();
        let big = Bytes::from(vec![b'x'; OUTPUT_QUEUE_BYTES]);
        feed.push(1, None, Lines { stream: StdStream::Stdout, text: big });
        feed.push(1, None, lines("a\nb\n"));
        feed.push(2, None, Lines { stream: StdStream::Stderr, ..lines("c\n") });
        feed.push(2, None, lines("d"));
        let mut run = Finished::unstarted(blitzen_protocol::Outcome::UnknownTask);
        feed.add_dropped(1, &mut run);
        assert_eq!((run.stdout.unstreamed, run.stderr.unstreamed), (2, 0));
        let mut run = Finished::unstarted(blitzen_protocol::Outcome::UnknownTask);
        feed.add_dropped(2, &mut run);
        assert_eq!((run.stdout.unstreamed, run.stderr.unstreamed), (1, 1));
        assert!(feed.wait(Some(Duration::ZERO)));
        assert_eq!(feed.take().len(), 1);
        feed.push(3, None, lines("e\n"));
        assert_eq!(feed.take().len(), 1, "taken lines make room");
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_lines_and_by_the_close() {
        let feed = Arc::new(OutputFeed::default());
        let waiter = {
            let feed = feed.clone();
            std::thread::spawn(move || feed.wait(None))
        };
        feed.push(1, Some("h".into()), lines("x\n"));
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
