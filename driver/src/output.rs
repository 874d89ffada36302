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

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::{Lines, StdStream};
use bytes::Bytes;

use crate::results::TaskId;
use crate::table::ResultTable;

pub use crate::table::feed::OUTPUT_QUEUE_BYTES;

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
            .map(|(id, host, lines)| OutputLines {
                task: TaskId::new(origin, id.get()),
                host,
                stream: lines.stream,
                text: lines.text,
            })
            .collect()
    }
}

/// Writes lines to this process's stdout or stderr, each prefixed with its task and host.
pub(crate) fn print_prefixed(id: DriverTaskId, host: Option<&str>, lines: &Lines) {
    let text = prefixed(id, host, &lines.text);
    // A closed stdout loses the lines, as it would lose a local program's.
    let _ = match lines.stream {
        StdStream::Stdout => std::io::stdout().lock().write_all(&text),
        StdStream::Stderr => std::io::stderr().lock().write_all(&text),
    };
}

/// Each line of `text` with `[task 12 on host] ` before it, the last ending with `\n` too.
fn prefixed(id: DriverTaskId, host: Option<&str>, text: &[u8]) -> Vec<u8> {
    let prefix = match host {
        Some(host) => format!("[task {id} on {host}] "),
        None => format!("[task {id}] "),
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
            prefixed(DriverTaskId::new(12), Some("node3"), b"a\nb"),
            b"[task 12 on node3] a\n[task 12 on node3] b\n"
        );
        assert_eq!(prefixed(DriverTaskId::new(4), None, b"one\n"), b"[task 4] one\n");
        assert!(prefixed(DriverTaskId::new(4), None, b"").is_empty());
    }
}
