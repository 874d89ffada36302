//! The parts of Blitzen shared by the multicore dispatcher and the cluster's client agent.
//!
//! - [`task`]: the [`Task`] trait that `#[task]` implements, and how a call is encoded.
//! - [`registry`]: the by-name table of the tasks compiled into this binary.
//! - [`builtin`]: tasks every binary has: `sleep`, `echo`, `command`.
//! - [`error`]: [`TaskError`], every way a task can fail, with its context.
//! - [`worker`]: what a process does when started as a worker ([`worker_main`]).
//! - [`capture`]: bounded capture of a task's stdout and stderr.
//! - [`pool`]: [`Pool`], N worker processes kept alive whatever the tasks do.
//! - [`net`]: framed MessagePack over TCP for the cluster.
//! - [`logging`]: Blitzen's `tracing` subscriber, controllable at run time.
//!
//! How they connect: a dispatcher encodes a call to a `Task` into a [`pool::Job`]; the pool sends
//! it to a worker process (the same binary, re-executed), which looks the name up in the
//! registry, runs it, and answers with an outcome and the captured output; the pool hands back a
//! [`pool::JobResult`], which [`TaskError::from_outcome`] turns into a value or an error.

pub mod auth;
pub mod builtin;
pub mod capture;
pub mod cli;
pub mod error;
pub mod handshake;
pub mod logging;
pub mod net;
pub mod pool;
pub mod registry;
pub mod task;
pub mod worker;

pub use error::{DecodeTarget, TaskContext, TaskError, WorkerInfo};
pub use pool::Pool;
pub use task::Task;
pub use worker::worker_main;

/// What `#[task]` expansions refer to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::task::{Task, TaskEntry, fingerprint, invoke_fallible, invoke_value};
    pub use blitzen_protocol::Outcome;
    pub use inventory;
}
