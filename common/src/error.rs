//! [`TaskError`]: every way a submitted task can fail, each with what a person needs to act.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

pub use blitzen_protocol::WorkerInfo;
use blitzen_protocol::{ExitReason, Outcome, SizeText};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Lines of a task's stderr quoted in its error.
pub const STDERR_TAIL_LINES: usize = 20;
/// Bytes of a task's stderr quoted in its error, at most.
pub const STDERR_TAIL_BYTES: usize = 4096;

/// Which task failed, where, and the end of what it wrote to stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskContext {
    /// The task id given by the dispatcher.
    pub id: u64,
    /// The task's registered name.
    pub task: Cow<'static, str>,
    /// The worker that ran it, when it reached one.
    pub worker: Option<WorkerInfo>,
    /// The last lines the task wrote to stderr (empty when it wrote nothing).
    pub stderr_tail: String,
}

impl fmt::Display for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} `{}`", self.id, self.task)?;
        if let Some(w) = &self.worker {
            write!(f, " (worker pid {}", w.pid)?;
            if let Some(host) = &w.host {
                write!(f, " on {host}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl TaskContext {
    fn stderr_suffix(&self) -> String {
        if self.stderr_tail.is_empty() {
            String::new()
        } else {
            let indented: Vec<String> =
                self.stderr_tail.lines().map(|l| format!("    {l}")).collect();
            format!("\n  last lines of its stderr:\n{}", indented.join("\n"))
        }
    }
}

/// What the arguments or result could not be converted from or to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecodeTarget {
    /// The worker could not decode the arguments as the task's argument type.
    Arguments,
    /// The worker could not encode the task's return value.
    Output,
    /// The caller could not decode the result as the type it asked for.
    Result,
}

impl fmt::Display for DecodeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeTarget::Arguments => "arguments",
            DecodeTarget::Output => "return value",
            DecodeTarget::Result => "result",
        })
    }
}

/// Why a task produced no value. Every variant carries a [`TaskContext`] (boxed, to keep
/// `Result<T, TaskError>` small).
///
/// `Debug` prints the same text as `Display`, so that a `main` returning an error, or a
/// `{:?}` of a result, reads as a sentence; a panic's backtrace stays in its field.
#[derive(Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TaskError {
    /// The task function returned `Err`. A retry helps only if the cause was transient.
    #[error("{ctx}: returned an error: {message}{}", ctx.stderr_suffix())]
    Returned {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The error's `Display` text.
        message: String,
    },
    /// The task panicked; its worker survived. A retry rarely helps. The panic is not printed
    /// to the task's stderr: its message, location and (with `RUST_BACKTRACE`) backtrace are
    /// here.
    #[error(
        "{ctx}: panicked at {}: {message}{}",
        location.as_deref().unwrap_or("an unknown location"),
        ctx.stderr_suffix()
    )]
    Panicked {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The panic message.
        message: String,
        /// `file:line:column`, when known.
        location: Option<String>,
        /// The backtrace, when `RUST_BACKTRACE` was set for the worker.
        backtrace: Option<String>,
    },
    /// The task ran longer than its timeout (counted from its start on a worker); the worker and
    /// every process in its process group were killed and the worker replaced. A retry helps
    /// only if the slowness was transient.
    #[error(
        "{ctx}: timed out after {:?}; its worker and the processes it started were killed{}",
        timeout,
        ctx.stderr_suffix()
    )]
    TimedOut {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The worker process died while running the task (abort, segfault, `exit`, a kill from
    /// outside, the OOM killer). The worker was replaced. A retry helps only if the crash was
    /// caused by something outside the task.
    #[error("{ctx}: the worker process died: {exit}{}{}", peak_suffix(*exit, *peak_rss), ctx.stderr_suffix())]
    WorkerCrashed {
        /// Which task.
        ctx: Box<TaskContext>,
        /// How the worker died.
        exit: ExitReason,
        /// The most memory the worker held at once, in bytes, when known.
        peak_rss: Option<u64>,
    },
    /// The task went past the memory limit it was given (`RunOptions::with_memory`, or its
    /// task's `memory` attribute); its worker was replaced. A retry needs a higher limit, or
    /// less data per task.
    #[error(
        "{ctx}: went past its memory limit of {}{}; its worker was replaced{}",
        SizeText(*limit),
        peak.map(|p| format!(" (peak RSS {})", SizeText(p))).unwrap_or_default(),
        ctx.stderr_suffix()
    )]
    MemoryExceeded {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The limit, in bytes.
        limit: u64,
        /// The most memory its worker held at once, in bytes, when known (under an
        /// address-space limit it can be far below the limit: the allocation that would have
        /// gone past it failed before it was used).
        peak: Option<u64>,
    },
    /// The worker binary has no task of this name. Retrying cannot help: rebuild the worker with
    /// the task linked in.
    #[error("{ctx}: no task of this name is compiled into the worker binary")]
    UnknownTask {
        /// Which task.
        ctx: Box<TaskContext>,
    },
    /// The worker has a task of this name with another signature. Retrying cannot help: build
    /// the submitter and the worker from the same task definitions.
    #[error(
        "{ctx}: signature mismatch: submitted as `{expected}`, but the worker has `{found}`; \
         build both from the same task definitions"
    )]
    SignatureMismatch {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The submitter's signature.
        expected: String,
        /// The worker's signature.
        found: String,
    },
    /// Arguments or results could not be converted. Retrying cannot help.
    #[error("{ctx}: cannot convert the {what}: {message}")]
    Decode {
        /// Which task.
        ctx: Box<TaskContext>,
        /// What failed to convert.
        what: DecodeTarget,
        /// The serializer's message.
        message: String,
    },
    /// The task was withdrawn before it finished (the dispatcher shut down, or it was
    /// cancelled). Submitting it again may succeed.
    #[error("{ctx}: cancelled: {reason}")]
    Cancelled {
        /// Which task.
        ctx: Box<TaskContext>,
        /// Why.
        reason: String,
    },
    /// The task can no longer be run or its result obtained (workers cannot start, the
    /// connection is gone for good). Retrying may help once the cause is fixed.
    #[error("{ctx}: lost: {reason}{}", ctx.stderr_suffix())]
    Lost {
        /// Which task.
        ctx: Box<TaskContext>,
        /// Why.
        reason: String,
    },
    /// The server did not accept the task because it holds its limit of tasks. Submitting
    /// again once earlier tasks have finished can succeed.
    #[error("{ctx}: refused: {reason}")]
    Refused {
        /// Which task.
        ctx: Box<TaskContext>,
        /// Why.
        reason: String,
    },
    /// No connected agent could run the task for as long as
    /// `RunOptions::with_unrunnable_limit` allowed: none has a task of this name and signature,
    /// or none is connected. Retrying helps once an agent built with the task is connected.
    #[error("{ctx}: unrunnable: {reason}")]
    Unrunnable {
        /// Which task.
        ctx: Box<TaskContext>,
        /// Why, and for how long it waited.
        reason: String,
    },
    /// The task did not run: a task it takes an input from (or was to run after) failed —
    /// `error` is that first failed ancestor's own error, `task` its id. Every descendant of a
    /// failed task ends so, at once.
    #[error("{ctx}: did not run: its input {error}")]
    DependencyFailed {
        /// Which task.
        ctx: Box<TaskContext>,
        /// The first failed ancestor.
        task: u64,
        /// How it failed.
        error: Box<TaskError>,
    },
}

/// What a crash report adds about memory: a hint when the kernel's kill may have been for lack
/// of it, else the peak alone.
fn peak_suffix(exit: ExitReason, peak_rss: Option<u64>) -> String {
    match (exit, peak_rss) {
        (ExitReason::Signal(9), Some(peak)) => {
            format!(" — possibly out of memory: peak RSS {}", SizeText(peak))
        }
        (_, Some(peak)) => format!(" (peak RSS {})", SizeText(peak)),
        (_, None) => String::new(),
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TaskError {
    /// The task this error is about.
    pub fn context(&self) -> &TaskContext {
        match self {
            TaskError::Returned { ctx, .. }
            | TaskError::Panicked { ctx, .. }
            | TaskError::TimedOut { ctx, .. }
            | TaskError::WorkerCrashed { ctx, .. }
            | TaskError::MemoryExceeded { ctx, .. }
            | TaskError::UnknownTask { ctx }
            | TaskError::SignatureMismatch { ctx, .. }
            | TaskError::Decode { ctx, .. }
            | TaskError::Cancelled { ctx, .. }
            | TaskError::Lost { ctx, .. }
            | TaskError::Refused { ctx, .. }
            | TaskError::Unrunnable { ctx, .. }
            | TaskError::DependencyFailed { ctx, .. } => ctx,
        }
    }

    /// The variant's name: `Panicked`, `TimedOut`, `WorkerCrashed`… (for listings and JSON).
    pub fn kind_name(&self) -> &'static str {
        match self {
            TaskError::Returned { .. } => "Returned",
            TaskError::Panicked { .. } => "Panicked",
            TaskError::TimedOut { .. } => "TimedOut",
            TaskError::WorkerCrashed { .. } => "WorkerCrashed",
            TaskError::MemoryExceeded { .. } => "MemoryExceeded",
            TaskError::UnknownTask { .. } => "UnknownTask",
            TaskError::SignatureMismatch { .. } => "SignatureMismatch",
            TaskError::Decode { .. } => "Decode",
            TaskError::Cancelled { .. } => "Cancelled",
            TaskError::Lost { .. } => "Lost",
            TaskError::Refused { .. } => "Refused",
            TaskError::Unrunnable { .. } => "Unrunnable",
            TaskError::DependencyFailed { .. } => "DependencyFailed",
        }
    }

    /// Turns a wire [`Outcome`] into the value bytes or a `TaskError`; `ctx` is asked for only
    /// when there is an error.
    ///
    /// `signature` is the submitter's view of the task, quoted on a signature mismatch.
    #[doc(hidden)]
    pub fn from_outcome<'a>(
        outcome: &'a Outcome,
        ctx: impl FnOnce() -> TaskContext,
        signature: &str,
    ) -> Result<&'a Bytes, TaskError> {
        let ctx = move || Box::new(ctx());
        Err(match outcome {
            Outcome::Value(bytes) => return Ok(bytes),
            Outcome::Returned { message, .. } => {
                TaskError::Returned { ctx: ctx(), message: message.clone() }
            }
            Outcome::Panicked { message, location, backtrace } => TaskError::Panicked {
                ctx: ctx(),
                message: message.clone(),
                location: location.clone(),
                backtrace: backtrace.clone(),
            },
            Outcome::UnknownTask => TaskError::UnknownTask { ctx: ctx() },
            Outcome::SignatureMismatch { worker_signature } => TaskError::SignatureMismatch {
                ctx: ctx(),
                expected: signature.to_string(),
                found: worker_signature.clone(),
            },
            Outcome::BadArguments { message } => TaskError::Decode {
                ctx: ctx(),
                what: DecodeTarget::Arguments,
                message: message.clone(),
            },
            Outcome::BadOutput { message } => TaskError::Decode {
                ctx: ctx(),
                what: DecodeTarget::Output,
                message: message.clone(),
            },
            Outcome::TimedOut { timeout_ms } => {
                TaskError::TimedOut { ctx: ctx(), timeout: Duration::from_millis(*timeout_ms) }
            }
            Outcome::WorkerCrashed { exit, peak_rss } => {
                TaskError::WorkerCrashed { ctx: ctx(), exit: *exit, peak_rss: *peak_rss }
            }
            Outcome::MemoryExceeded { limit, peak } => {
                TaskError::MemoryExceeded { ctx: ctx(), limit: *limit, peak: *peak }
            }
            Outcome::Cancelled { reason } => {
                TaskError::Cancelled { ctx: ctx(), reason: reason.clone() }
            }
            Outcome::Lost { reason } => TaskError::Lost { ctx: ctx(), reason: reason.clone() },
            Outcome::Refused { reason } => {
                TaskError::Refused { ctx: ctx(), reason: reason.clone() }
            }
            Outcome::Unrunnable { reason } => {
                TaskError::Unrunnable { ctx: ctx(), reason: reason.clone() }
            }
            Outcome::DependencyFailed { task, name, outcome } => {
                let ancestor = TaskContext {
                    id: *task,
                    task: Cow::Owned(name.clone()),
                    worker: None,
                    stderr_tail: String::new(),
                };
                // Boxed: a closure type of its own at each level would make the compiler
                // instantiate this function without end.
                let of_ancestor: Box<dyn FnOnce() -> TaskContext> = Box::new({
                    let ancestor = ancestor.clone();
                    move || ancestor
                });
                let error = match TaskError::from_outcome(outcome, of_ancestor, "") {
                    Err(e) => e,
                    Ok(_) => TaskError::Lost {
                        ctx: Box::new(ancestor),
                        reason: "it succeeded, yet was reported as failed".into(),
                    },
                };
                TaskError::DependencyFailed { ctx: ctx(), task: *task, error: Box::new(error) }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(stderr_tail: &str) -> TaskContext {
        TaskContext {
            id: 7,
            task: "f2".into(),
            worker: Some(WorkerInfo { pid: 4242, host: None, devices: Default::default() }),
            stderr_tail: stderr_tail.into(),
        }
    }

    #[test]
    fn debug_reads_as_the_message_and_leaves_the_backtrace_out() {
        let backtrace = "   0: std::backtrace\n".repeat(60);
        let e = TaskError::from_outcome(
            &Outcome::Panicked {
                message: "index out of bounds".into(),
                location: Some("src/lib.rs:3:5".into()),
                backtrace: Some(backtrace),
            },
            || ctx(""),
            "fn f2() -> ()",
        )
        .expect_err("a panic");
        let debug = format!("{e:?}");
        assert_eq!(debug, e.to_string());
        assert!(debug.starts_with("task 7 `f2` (worker pid 4242): panicked at src/lib.rs:3:5"));
        assert!(debug.len() < 200, "{debug}");
        assert!(matches!(e, TaskError::Panicked { backtrace: Some(_), .. }), "kept in its field");
    }

    #[test]
    fn messages_name_the_task_the_worker_and_the_cause() {
        let e = TaskError::from_outcome(
            &Outcome::WorkerCrashed { exit: ExitReason::Signal(11), peak_rss: None },
            || ctx("about to crash"),
            "fn f2() -> ()",
        )
        .expect_err("a crash");
        let text = e.to_string();
        for part in ["task 7 `f2`", "pid 4242", "SIGSEGV", "about to crash"] {
            assert!(text.contains(part), "`{part}` missing from: {text}");
        }

        let e = TaskError::from_outcome(
            &Outcome::SignatureMismatch { worker_signature: "fn f2(u8) -> ()".into() },
            || ctx(""),
            "fn f2() -> ()",
        )
        .expect_err("a mismatch");
        assert!(e.to_string().contains("`fn f2() -> ()`, but the worker has `fn f2(u8) -> ()`"));
        assert_eq!(e.context().id, 7);
    }

    #[test]
    fn memory_is_named_in_kills_and_limits() {
        let text = |outcome: Outcome| {
            TaskError::from_outcome(&outcome, || ctx(""), "sig").expect_err("an error").to_string()
        };
        let killed =
            text(Outcome::WorkerCrashed { exit: ExitReason::Signal(9), peak_rss: Some(3 << 30) });
        assert!(
            killed.contains("SIGKILL")
                && killed.contains("possibly out of memory: peak RSS 3.0 GiB"),
            "{killed}"
        );
        let aborted =
            text(Outcome::WorkerCrashed { exit: ExitReason::Signal(6), peak_rss: Some(1 << 20) });
        assert!(
            aborted.contains("(peak RSS 1.0 MiB)") && !aborted.contains("possibly"),
            "{aborted}"
        );
        let limited = text(Outcome::MemoryExceeded { limit: 100 << 20, peak: Some(2 << 20) });
        assert!(
            limited.contains("went past its memory limit of 100.0 MiB (peak RSS 2.0 MiB)"),
            "{limited}"
        );
    }

    #[test]
    fn each_outcome_maps_to_its_own_variant() {
        let cases = [
            (Outcome::Returned { message: "m".into(), detail: None }, "Returned"),
            (
                Outcome::Panicked { message: "m".into(), location: None, backtrace: None },
                "Panicked",
            ),
            (Outcome::TimedOut { timeout_ms: 5 }, "TimedOut"),
            (Outcome::WorkerCrashed { exit: ExitReason::Code(3), peak_rss: None }, "WorkerCrashed"),
            (Outcome::MemoryExceeded { limit: 1 << 20, peak: None }, "MemoryExceeded"),
            (Outcome::UnknownTask, "UnknownTask"),
            (Outcome::SignatureMismatch { worker_signature: "s".into() }, "SignatureMismatch"),
            (Outcome::BadArguments { message: "m".into() }, "Decode"),
            (Outcome::Cancelled { reason: "r".into() }, "Cancelled"),
            (Outcome::Lost { reason: "r".into() }, "Lost"),
            (Outcome::Refused { reason: "r".into() }, "Refused"),
            (Outcome::Unrunnable { reason: "r".into() }, "Unrunnable"),
        ];
        for (outcome, variant) in cases {
            let e = TaskError::from_outcome(&outcome, || ctx(""), "sig").expect_err("an error");
            assert_eq!(TaskError::kind_name(&e), variant, "{e}");
        }
        let value = Outcome::Value(Bytes::from("x"));
        let v = TaskError::from_outcome(&value, || panic!("no context for a value"), "sig");
        assert_eq!(v, Ok(&Bytes::from("x")));
    }
}
