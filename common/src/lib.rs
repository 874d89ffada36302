//! The parts of Blitzen shared by the multicore dispatcher and the cluster's client agent, and
//! the logging and command-line helpers every Blitzen program uses.
//!
//! Always present:
//! - [`logging`]: Blitzen's `tracing` subscriber, controllable at run time.
//! - [`cli`]: what the command-line programs share: seconds as flags, the exit code, signals.
//!
//! With the `error` feature (`blitzen-server` has this one only): [`error`].
//!
//! With the `pool` feature (on by default; `blitzen-server` goes without):
//! - [`task`]: the [`Task`] trait that `#[task]` implements, and how a call is encoded.
//! - [`inputs`]: a call's arguments argument by argument, where another task's result may
//!   stand for a value ([`inputs::Accepts`], which `#[task]` implements too).
//! - [`registry`]: the by-name table of the tasks compiled into this binary.
//! - [`builtin`]: tasks every binary has: `sleep`, `echo`, `command`.
//! - [`error`]: [`TaskError`], every way a task can fail, with its context.
//! - [`worker`]: what a process does when started as a worker ([`worker_main`]).
//! - [`capture`]: bounded capture of a task's stdout and stderr.
//! - [`needs`]: [`needs::Needs`], what a task asks for, as Rust code writes it.
//! - `start_mark`: the counter of started tasks a worker shares with its pool, so the pool
//!   knows which task a dead worker was running.
//! - [`pool`]: [`Pool`], N worker processes kept alive whatever the tasks do.
//!
//! How they connect: a dispatcher encodes a call to a `Task` into a [`pool::RunTask`]; the pool sends
//! it to a worker process (the same binary, re-executed), which looks the name up in the
//! registry, runs it, and answers with the run's [`Finished`](blitzen_protocol::Finished)
//! record; the pool hands back a [`pool::Report`], whose outcome [`TaskError::from_outcome`]
//! turns into a value or an error.

pub mod cli;
pub mod logging;

#[cfg(feature = "pool")]
pub mod builtin;
#[cfg(feature = "pool")]
pub mod capture;
#[cfg(feature = "error")]
pub mod error;
#[cfg(feature = "pool")]
pub mod inputs;
#[cfg(feature = "pool")]
pub mod needs;
#[cfg(feature = "pool")]
pub mod pool;
#[cfg(feature = "pool")]
pub mod registry;
#[cfg(feature = "pool")]
mod start_mark;
#[cfg(feature = "pool")]
pub mod task;
#[cfg(feature = "pool")]
pub mod worker;

#[cfg(feature = "error")]
pub use error::{DecodeTarget, TaskContext, TaskError, WorkerInfo};
#[cfg(feature = "pool")]
pub use pool::Pool;
#[cfg(feature = "pool")]
pub use task::Task;
#[cfg(feature = "pool")]
pub use worker::worker_main;

/// What `#[task]` expansions refer to. Not a stable API.
#[cfg(feature = "pool")]
#[doc(hidden)]
pub mod __private {
    pub use crate::inputs::{Accepts, Input, Parts};
    pub use crate::needs::Needs;
    pub use crate::task::{Task, TaskEntry, fingerprint, invoke_fallible, invoke_value};
    pub use blitzen_protocol::{Outcome, parse_size};
    pub use inventory;
}
