//! Lines a task prints while it runs, on their way to the driver that asked to see them live
//! (a task of a streamed kind: [`TaskKind::stream`](crate::cluster::TaskKind::stream)).
//!
//! A worker sends what a streamed task writes as it comes, a whole line or several at a time
//! ([`FromWorker::Output`](crate::FromWorker::Output)); its pool hands it on, an agent sends it
//! to the server ([`FromAgent::Output`](crate::cluster::FromAgent::Output)), the server to the
//! driver ([`ToDriver::Output`](crate::cluster::ToDriver::Output)). Each hop may drop lines to
//! stay within its bounds; it counts them, and the count reaches the task's result
//! ([`Captured::unstreamed`](crate::Captured::unstreamed)). The result still carries the
//! captured output in full, as for a task that is not streamed.

use std::collections::HashMap;
use std::hash::Hash;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::finished::Finished;

use crate::ids::{DriverTaskId, TaskKey};

/// Which of a task's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StdStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

/// One or more whole lines from one stream, each ending with `\n` (a line longer than
/// [`MAX_LINE`] is cut into pieces that do; a task's last line may lack it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lines {
    /// The stream.
    pub stream: StdStream,
    /// The lines.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub text: Bytes,
}

impl Lines {
    /// How many lines `text` holds (a last one without `\n` counts).
    pub fn count(&self) -> u64 {
        let newlines = self.text.iter().filter(|&&b| b == b'\n').count() as u64;
        newlines + u64::from(self.text.last().is_some_and(|&b| b != b'\n'))
    }
}

/// The longest line sent as one: beyond it a line is cut.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines of a task an agent runs ([`FromAgent::Output`](crate::cluster::FromAgent::Output)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutput {
    /// The server's key for the task.
    pub key: TaskKey,
    /// What it printed.
    pub lines: Lines,
}

/// Lines of a driver's task ([`ToDriver::Output`](crate::cluster::ToDriver::Output)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// The driver's id of the task.
    pub id: DriverTaskId,
    /// The host of the agent that runs it.
    pub host: String,
    /// What it printed.
    pub lines: Lines,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_with_a_last_one_lacking_its_newline() {
        let lines = |text: &'static str| Lines { stream: StdStream::Stdout, text: text.into() };
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("a\n").count(), 1);
        assert_eq!(lines("a\nb\n").count(), 2);
        assert_eq!(lines("a\nb").count(), 2);
        assert_eq!(lines("\n\n").count(), 2);
    }
}

/// Lines of tasks' output left out of a stream on the way (past a budget, or with nowhere to
/// go), counted by task and stream until each task's report takes the count in
/// ([`Captured::unstreamed`](crate::Captured)). One counter for every hop that can drop lines:
/// the agent, the server and the dispatcher, each by the id it knows the task by.
#[derive(Debug)]
pub struct Unstreamed<Id> {
    /// Lines left out, `[stdout, stderr]`, of tasks whose report has not come yet.
    by_task: HashMap<Id, [u64; 2]>,
}

impl<Id> Default for Unstreamed<Id> {
    fn default() -> Self {
        Self { by_task: HashMap::new() }
    }
}

impl<Id: Hash + Eq> Unstreamed<Id> {
    /// Counts `lines` of `stream` that task `id` printed and that were left out.
    pub fn count(&mut self, id: Id, stream: StdStream, lines: u64) {
        let index = match stream {
            StdStream::Stdout => 0,
            StdStream::Stderr => 1,
        };
        self.by_task.entry(id).or_default()[index] += lines;
    }

    /// Adds what was left out of task `id` into its report's `run`, and forgets the task;
    /// returns the counts added, `[stdout, stderr]`, when there were any.
    pub fn add_into(&mut self, id: &Id, run: &mut Finished) -> Option<[u64; 2]> {
        if self.by_task.is_empty() {
            return None;
        }
        let [stdout, stderr] = self.by_task.remove(id)?;
        run.stdout.unstreamed += stdout;
        run.stderr.unstreamed += stderr;
        Some([stdout, stderr])
    }

    /// Forgets task `id` (its report will not come here).
    pub fn forget(&mut self, id: &Id) {
        if !self.by_task.is_empty() {
            self.by_task.remove(id);
        }
    }

    /// Whether no line is counted.
    pub fn is_empty(&self) -> bool {
        self.by_task.is_empty()
    }
}
