//! Messages between a process pool (in a dispatcher or a client agent) and its worker processes.
//!
//! The pool writes [`ToWorker`] frames to the worker's private socket; the worker answers with
//! one [`FromWorker::Ready`] when it has started, then one [`FromWorker::Done`] per task, in the
//! order the tasks arrived.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Bumped whenever a message below changes incompatibly.
pub const WORKER_PROTOCOL_VERSION: u32 = 1;

/// Pool → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one task. Tasks are run one at a time, in arrival order.
    Run(RunTask),
}

/// One task for a worker to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    /// The id the pool uses to match the answer.
    pub id: u64,
    /// The registered task name.
    pub name: String,
    /// Fingerprint of the task signature the submitter was compiled with.
    pub fingerprint: u64,
    /// MessagePack-encoded arguments.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub args: Bytes,
}

/// Borrowed twin of [`ToWorker`], encoded identically: the pool sends tasks without copying
/// their names or arguments.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum ToWorkerRef<'a> {
    /// See [`ToWorker::Run`].
    Run(RunTaskRef<'a>),
}

/// Borrowed twin of [`RunTask`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunTaskRef<'a> {
    /// See [`RunTask::id`].
    pub id: u64,
    /// See [`RunTask::name`].
    pub name: &'a str,
    /// See [`RunTask::fingerprint`].
    pub fingerprint: u64,
    /// See [`RunTask::args`].
    pub args: &'a Bytes,
}

/// Worker → pool.
// Messages are decoded and consumed at once; boxing `Done` would cost an allocation per task.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent once, after start-up, before any task.
    Ready(WorkerReady),
    /// A task finished (in any way the worker could observe).
    Done(TaskDone),
}

/// The worker's start-up announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReady {
    /// The worker's process id.
    pub pid: u32,
    /// [`WORKER_PROTOCOL_VERSION`] of the worker.
    pub version: u32,
}

/// The answer to one [`RunTask`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    /// The [`RunTask::id`] answered.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome,
    /// What the task wrote to its standard output.
    pub stdout: Captured,
    /// What the task wrote to its standard error.
    pub stderr: Captured,
    /// Time spent running the task, in microseconds.
    pub elapsed_us: u64,
}

/// How a task ended. The first variants are decided by the worker, the last ones by whoever
/// supervises it (the pool, or later the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The task returned this MessagePack-encoded value.
    Value(#[serde(deserialize_with = "crate::frame::shared_bytes")] Bytes),
    /// The task returned `Err`; its `Display` text.
    Returned {
        /// The error's text.
        message: String,
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
}

impl Captured {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty() && self.omitted == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, decode_frame, encode};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn captured() -> impl Strategy<Value = Captured> {
        (bytes(), bytes(), any::<u64>()).prop_map(|(head, tail, omitted)| Captured {
            head,
            tail,
            omitted,
        })
    }

    fn exit() -> impl Strategy<Value = ExitReason> {
        prop_oneof![
            any::<i32>().prop_map(ExitReason::Code),
            any::<i32>().prop_map(ExitReason::Signal),
            Just(ExitReason::Unknown),
        ]
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            bytes().prop_map(Outcome::Value),
            any::<String>().prop_map(|message| Outcome::Returned { message }),
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
            exit().prop_map(|exit| Outcome::WorkerCrashed { exit }),
            any::<String>().prop_map(|reason| Outcome::Cancelled { reason }),
            any::<String>().prop_map(|reason| Outcome::Lost { reason }),
            any::<String>().prop_map(|reason| Outcome::Refused { reason }),
        ]
    }

    fn to_worker() -> impl Strategy<Value = ToWorker> {
        (any::<u64>(), any::<String>(), any::<u64>(), bytes()).prop_map(
            |(id, name, fingerprint, args)| ToWorker::Run(RunTask { id, name, fingerprint, args }),
        )
    }

    fn from_worker() -> impl Strategy<Value = FromWorker> {
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(pid, version)| FromWorker::Ready(WorkerReady { pid, version })),
            (any::<u64>(), outcome(), captured(), captured(), any::<u64>()).prop_map(
                |(id, outcome, stdout, stderr, elapsed_us)| {
                    FromWorker::Done(TaskDone { id, outcome, stdout, stderr, elapsed_us })
                }
            ),
        ]
    }

    fn round_trip<M>(msg: &M) -> M
    where
        M: Serialize + serde::de::DeserializeOwned,
    {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf).expect("encodes");
        let body = decode_frame(&mut buf, usize::MAX).expect("valid").expect("complete");
        assert!(buf.is_empty());
        decode(&body).expect("decodes")
    }

    proptest! {
        #[test]
        fn to_worker_round_trips(msg in to_worker()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn from_worker_round_trips(msg in from_worker()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn random_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<FromWorker>(&data);
            let _ = decode::<ToWorker>(&data);
        }
    }

    #[test]
    fn borrowed_task_encodes_like_the_owned_one() {
        let args = Bytes::from_static(b"\x93\x01\x02\x03");
        let owned =
            ToWorker::Run(RunTask { id: 9, name: "sq".into(), fingerprint: 5, args: args.clone() });
        let borrowed =
            ToWorkerRef::Run(RunTaskRef { id: 9, name: "sq", fingerprint: 5, args: &args });
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode(&owned, &mut a).expect("encodes");
        encode(&borrowed, &mut b).expect("encodes");
        assert_eq!(a, b);
    }

    #[test]
    fn payloads_travel_as_binary_not_integer_lists() {
        let args = Bytes::from(vec![200u8; 1000]);
        let msg = ToWorker::Run(RunTask { id: 1, name: "t".into(), fingerprint: 2, args });
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).expect("encodes");
        // 1000 bytes as a list of integers would take 2000 bytes.
        assert!(buf.len() < 1100, "frame is {} bytes", buf.len());
    }

    #[test]
    fn captured_text_marks_the_omission() {
        let c = Captured { head: Bytes::from("ab"), tail: Bytes::from("yz\n"), omitted: 10 };
        assert_eq!(c.to_text(), "ab\n[... 10 bytes omitted ...]\nyz\n");
        assert_eq!(c.total_len(), 15);
        let d = Captured { head: Bytes::from("1\n2\n3\n4\n"), ..Default::default() };
        assert_eq!(d.last_lines(2, 1000), "3\n4");
        assert_eq!(d.last_lines(10, 3), "4");
    }
}
