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

use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
