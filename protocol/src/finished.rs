//! How one run of a task ended: [`Finished`] (its [`Outcome`], what it printed as
//! [`Captured`] output, how long it ran), the [`WorkerInfo`] of whoever ran it, and
//! [`Report`], the two with the task's id: a finished task on its way back.
//!
//! Every hop of a finished task — a worker's answer, a pool's job result, an agent's result,
//! the server's report to a driver — is one `Report`, by the id that hop knows the task by, so
//! a field added here reaches every hop at once.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How one run of a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// What happened.
    pub outcome: Outcome,
    /// What the task wrote to its standard output (left off the wire when empty).
    #[serde(default, skip_serializing_if = "Captured::is_empty")]
    pub stdout: Captured,
    /// What the task wrote to its standard error (left off the wire when empty).
    #[serde(default, skip_serializing_if = "Captured::is_empty")]
    pub stderr: Captured,
    /// Its run time on the worker, in microseconds; 0 when it never reached one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub elapsed_us: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Finished {
    /// A run that never started: no output, no run time. The one constructor for tasks settled
    /// before reaching a worker (refused, cancelled, lost, given up).
    pub fn unstarted(outcome: Outcome) -> Self {
        Self { outcome, stdout: Captured::default(), stderr: Captured::default(), elapsed_us: 0 }
    }

    /// Its run time on the worker.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.elapsed_us)
    }
}

/// A finished task on its way back to whoever submitted it, the same record at every hop, by
/// the id that hop knows it by: worker → pool and pool → agent or dispatcher by
/// [`JobId`](crate::JobId), agent → server by [`TaskKey`](crate::TaskKey), server → driver by
/// [`DriverTaskId`](crate::DriverTaskId).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report<Id> {
    /// The task, as this hop knows it.
    pub id: Id,
    /// The worker that ran it, if it reached one: filled by the pool (its pid) and the server
    /// (its agent's host); the worker itself leaves it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerInfo>,
    /// How it ended.
    pub run: Finished,
}

impl<Id> Report<Id> {
    /// The bytes of what it carries (its value, its captured output), for batching
    /// ([`by_size`](crate::frame::by_size)).
    pub fn payload_len(&self) -> usize {
        let value = match &self.run.outcome {
            Outcome::Value(bytes) => bytes.len(),
            Outcome::Returned { message, detail } => {
                message.len() + detail.as_ref().map_or(0, Bytes::len)
            }
            _ => 0,
        };
        let captured = |c: &Captured| c.head.len() + c.tail.len();
        value + captured(&self.run.stdout) + captured(&self.run.stderr)
    }

    /// A task that ended without reaching a worker.
    pub fn unstarted(id: Id, outcome: Outcome) -> Self {
        Self { id, worker: None, run: Finished::unstarted(outcome) }
    }

    /// The same report, for the next hop, which knows the task as `id`.
    pub fn with_id<Next>(self, id: Next) -> Report<Next> {
        Report { id, worker: self.worker, run: self.run }
    }
}

/// A worker process, for messages: the pid, and in a cluster the host it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its process id.
    pub pid: u32,
    /// The host it runs on, in a cluster; `None` on the local machine.
    #[serde(default)]
    pub host: Option<String>,
    /// The devices of counted resources the task held, by resource (`gpu` → `[1]`): the
    /// indices its `CUDA_VISIBLE_DEVICES` / `BLITZEN_RESOURCE_GPU` named.
    #[serde(default, skip_serializing_if = "crate::devices::Devices::is_empty")]
    pub devices: crate::devices::Devices,
}

/// How a task ended. The first variants are decided by the worker, the last ones by whoever
/// supervises it (the pool, or later the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The task returned this MessagePack-encoded value.
    Value(#[serde(deserialize_with = "crate::frame::shared_bytes")] Bytes),
    /// The task returned `Err` (or, in Python, raised); its `Display` text.
    Returned {
        /// The error's text (for a Python task, its traceback).
        message: String,
        /// The error as the task's own language encodes it, opaque to Blitzen: the Python
        /// package puts the pickled exception here. `None` for Rust tasks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Bytes>,
    },
    /// The task panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// The backtrace, when the worker's `RUST_BACKTRACE` asked for one.
        #[serde(default)]
        backtrace: Option<String>,
    },
    /// No task of that name is registered in the worker's binary.
    UnknownTask,
    /// The worker knows the name, with another signature.
    SignatureMismatch {
        /// The signature compiled into the worker.
        worker_signature: String,
    },
    /// The arguments did not decode as the task's argument type.
    BadArguments {
        /// The decoder's message.
        message: String,
    },
    /// The task's value could not be encoded.
    BadOutput {
        /// The encoder's message.
        message: String,
    },
    /// The task ran past its timeout; its worker was killed.
    TimedOut {
        /// The timeout in force, in milliseconds.
        timeout_ms: u64,
    },
    /// The worker process died while running the task.
    WorkerCrashed {
        /// How it died.
        exit: ExitReason,
        /// The most memory the worker process held at once (its peak RSS), in bytes, when
        /// known: a worker killed by the kernel for lack of memory shows a large one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peak_rss: Option<u64>,
    },
    /// The task went past its memory limit; its worker was replaced.
    MemoryExceeded {
        /// The limit, in bytes.
        limit: u64,
        /// The most memory its worker process held at once (its peak RSS), in bytes, when
        /// known. Under an address-space limit it can be far below the limit: the allocation
        /// that would have gone past it failed before it was used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peak: Option<u64>,
    },
    /// The task was withdrawn before it finished (shutdown, cancellation).
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The task cannot be run or its result cannot be obtained any more.
    Lost {
        /// Why.
        reason: String,
    },
    /// The server did not accept the task (its task limit was reached).
    Refused {
        /// Why.
        reason: String,
    },
    /// No connected agent could run the task for as long as its submitter allowed.
    Unrunnable {
        /// Why, and for how long.
        reason: String,
    },
    /// The task did not run: a task whose result it takes as an input (or that it was to run
    /// after) failed. Names the first failed ancestor and carries its outcome.
    DependencyFailed {
        /// The failed ancestor's id.
        task: u64,
        /// Its name (or label).
        name: String,
        /// How it failed.
        outcome: Box<Outcome>,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// Its status could not be read.
    Unknown,
}

impl ExitReason {
    /// The conventional name of a signal number, for messages.
    pub fn signal_name(signal: i32) -> &'static str {
        match signal {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            4 => "SIGILL",
            5 => "SIGTRAP",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL",
            10 => "SIGUSR1",
            11 => "SIGSEGV",
            12 => "SIGUSR2",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            24 => "SIGXCPU",
            25 => "SIGXFSZ",
            31 => "SIGSYS",
            _ => "signal",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Code(code) => write!(f, "exited with code {code}"),
            ExitReason::Signal(9) => {
                write!(f, "killed by signal 9 (SIGKILL: killed from outside, or by the OOM killer)")
            }
            ExitReason::Signal(sig) => {
                write!(f, "killed by signal {sig} ({})", ExitReason::signal_name(sig))
            }
            ExitReason::Unknown => write!(f, "ended with an unknown status"),
        }
    }
}

/// A bounded capture of an output stream: the head and, when the stream was longer than the
/// limit, the tail, with the count of bytes left out between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// The first bytes written (all of them when `omitted == 0`).
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub head: Bytes,
    /// The last bytes written, when some were omitted.
    #[serde(default, deserialize_with = "crate::frame::shared_bytes")]
    pub tail: Bytes,
    /// Bytes written between `head` and `tail` that were not kept.
    #[serde(default)]
    pub omitted: u64,
    /// Of a streamed task (see [`crate::output`]), the lines not shown live: past the rate or
    /// size a worker streams per task, or what a server or driver could not keep up with.
    /// They are in the capture all the same.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unstreamed: u64,
}

impl Captured {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty() && self.omitted == 0 && self.unstreamed == 0
    }

    /// Whether some of the stream was left out.
    pub fn is_truncated(&self) -> bool {
        self.omitted > 0
    }

    /// Total bytes the stream held.
    pub fn total_len(&self) -> u64 {
        self.head.len() as u64 + self.tail.len() as u64 + self.omitted
    }

    /// The capture as text (invalid UTF-8 replaced), with a marker where bytes were left out.
    pub fn to_text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.omitted > 0 {
            s.push_str(&format!("\n[... {} bytes omitted ...]\n", self.omitted));
            s.push_str(&String::from_utf8_lossy(&self.tail));
        }
        s
    }

    /// At most the last `lines` lines (and at most `max_bytes` bytes) of the capture, as text.
    pub fn last_lines(&self, lines: usize, max_bytes: usize) -> String {
        let src: &[u8] = if self.tail.is_empty() { &self.head } else { &self.tail };
        let src = &src[src.len().saturating_sub(max_bytes)..];
        let text = String::from_utf8_lossy(src);
        let trimmed = text.trim_end_matches('\n');
        let start = trimmed
            .rmatch_indices('\n')
            .nth(lines.saturating_sub(1))
            .map(|(i, _)| i + 1)
            .unwrap_or(0);
        trimmed[start..].trim_start_matches('\n').to_string()
    }
}

/// Proptest strategies for the records above, shared by the message tests of this crate.
#[cfg(test)]
pub(crate) mod strategies {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    pub(crate) fn captured() -> impl Strategy<Value = Captured> {
        (bytes(), bytes(), any::<u64>(), any::<u64>()).prop_map(
            |(head, tail, omitted, unstreamed)| Captured { head, tail, omitted, unstreamed },
        )
    }

    fn exit() -> impl Strategy<Value = ExitReason> {
        prop_oneof![
            any::<i32>().prop_map(ExitReason::Code),
            any::<i32>().prop_map(ExitReason::Signal),
            Just(ExitReason::Unknown),
        ]
    }

    pub(crate) fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            bytes().prop_map(Outcome::Value),
            (any::<String>(), proptest::option::of(bytes()))
                .prop_map(|(message, detail)| Outcome::Returned { message, detail }),
            (
                any::<String>(),
                proptest::option::of(any::<String>()),
                proptest::option::of(any::<String>())
            )
                .prop_map(|(message, location, backtrace)| Outcome::Panicked {
                    message,
                    location,
                    backtrace
                }),
            Just(Outcome::UnknownTask),
            any::<String>()
                .prop_map(|worker_signature| Outcome::SignatureMismatch { worker_signature }),
            any::<String>().prop_map(|message| Outcome::BadArguments { message }),
            any::<String>().prop_map(|message| Outcome::BadOutput { message }),
            any::<u64>().prop_map(|timeout_ms| Outcome::TimedOut { timeout_ms }),
            (exit(), proptest::option::of(any::<u64>()))
                .prop_map(|(exit, peak_rss)| Outcome::WorkerCrashed { exit, peak_rss }),
            (any::<u64>(), proptest::option::of(any::<u64>()))
                .prop_map(|(limit, peak)| Outcome::MemoryExceeded { limit, peak }),
            any::<String>().prop_map(|reason| Outcome::Cancelled { reason }),
            any::<String>().prop_map(|reason| Outcome::Lost { reason }),
            any::<String>().prop_map(|reason| Outcome::Refused { reason }),
            any::<String>().prop_map(|reason| Outcome::Unrunnable { reason }),
        ]
    }

    pub(crate) fn finished() -> impl Strategy<Value = Finished> {
        (outcome(), captured(), captured(), any::<u64>()).prop_map(
            |(outcome, stdout, stderr, elapsed_us)| Finished {
                outcome,
                stdout,
                stderr,
                elapsed_us,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, decode_frame, encode};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn round_trip(msg: &Finished) -> Finished {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf).expect("encodes");
        let body = decode_frame(&mut buf, usize::MAX).expect("valid").expect("complete");
        decode(&body).expect("decodes")
    }

    proptest! {
        #[test]
        fn finished_runs_round_trip(run in strategies::finished()) {
            prop_assert_eq!(round_trip(&run), run);
        }
    }

    #[test]
    fn an_unstarted_run_is_only_its_outcome_on_the_wire() {
        let run = Finished::unstarted(Outcome::UnknownTask);
        let bytes = rmp_serde::to_vec_named(&run).expect("encodes");
        let text = String::from_utf8_lossy(&bytes);
        for field in ["stdout", "stderr", "elapsed_us"] {
            assert!(!text.contains(field), "{field} is on the wire: {bytes:?}");
        }
        assert_eq!(round_trip(&run), run);
        assert_eq!(run.elapsed(), Duration::ZERO);
    }

    #[test]
    fn captured_text_marks_the_omission() {
        let c = Captured {
            head: Bytes::from("ab"),
            tail: Bytes::from("yz\n"),
            omitted: 10,
            unstreamed: 0,
        };
        assert_eq!(c.to_text(), "ab\n[... 10 bytes omitted ...]\nyz\n");
        assert_eq!(c.total_len(), 15);
        let d = Captured { head: Bytes::from("1\n2\n3\n4\n"), ..Default::default() };
        assert_eq!(d.last_lines(2, 1000), "3\n4");
        assert_eq!(d.last_lines(10, 3), "4");
    }
}
