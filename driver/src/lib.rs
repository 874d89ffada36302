//! Blitzen: keep every core busy with independent jobs, and survive whatever they do.
//!
//! - [`MulticoreDispatcher`]: a pool of worker *processes* on this machine. A panicking task is
//!   reported, a crashing one (abort, segfault, `exit`) gets its worker replaced, a runaway one
//!   is killed at its timeout; the pool always returns to N workers.
//! - [`distributed::DistributedDispatcher`]: the same API over a cluster of `blitzen-client`
//!   agents and a `blitzen-server`; also starts either in-process (`spawn_server`,
//!   `spawn_client`).
//! - [`logging`], [`utils`] (`get_local_ip`): the seed's helpers.
//! - [`task`]: the attribute that turns a plain function into a task with a typed handle.
//!   `dispatcher.run(square, 4)` is checked at compile time against `fn square(u64) -> u64`.
//! - [`worker_main`]: call it first thing in `main`; workers are this program, re-executed.
//! - Blocking waits (`get_results`, `join`) and their async twins for Tokio programs
//!   (`result(id).await`, `results(&ids)`, `completed(&ids)`, `join_async`).
//! - Task graphs: a task's handle where a value of its output type goes
//!   (`d.submit(merge, (a, b))`), and tasks run after others (`d.after(&ids).run(…)`).
//! - Results: [`TaskId`], [`TaskResult`], [`TaskError`] (one variant per way a task can fail).
//! - [`builtin`]: tasks every binary has: [`sleep`](const@sleep), [`echo`],
//!   [`command`](const@command) (run a program).
//!
//! Inside: `dispatcher` ([`Dispatcher`], written once over a [`Backend`]), `multicore` and
//! [`distributed`] (the two backends), `results` (task ids, run and fetch options, results),
//! `error` ([`DispatchError`]), `table` (the results a dispatcher keeps until they are
//! fetched, with the feed of what tasks print), `output` ([`Output`]: what is done with those
//! lines), `streams` (`map`, `imap`, `imap_unordered`), `awaits` (the async face: results
//! as futures and a stream, [`TaskFuture`], [`Completed`]), `graphs` (tasks that take other
//! tasks' results, [`Dispatcher::submit`], and run after others, [`After`]), `local_shares`
//! (the values a multicore dispatcher shares, as files its workers map), `call` (a
//! submitted task as a backend receives it), `watch` ([`Watch`]: the tasks a binding's
//! executor watches as they finish), `progress` (the progress bar of long
//! waits), `runtime` (the background thread each dispatcher drives its connection or its pool
//! from), `tasks` ([`Tasks`], what `tasks![]` makes: the crates an agent serves).
//!
//! ```no_run
//! #[blitzen::task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), blitzen::DispatchError> {
//!     blitzen::worker_main();
//!     let dispatcher = blitzen::MulticoreDispatcher::new(4)?;
//!     let ids: Vec<_> = (0..10).map(|i| dispatcher.run(square, i)).collect();
//!     for result in dispatcher.get_results(&ids)? {
//!         println!("{:?}", result);
//!     }
//!     Ok(())
//! }
//! ```

mod awaits;
mod call;
mod dispatcher;
pub mod distributed;
mod error;
mod graphs;
mod local_shares;
mod multicore;
mod output;
mod progress;
mod results;
mod runtime;
mod streams;
mod table;
mod tasks;
pub mod utils;
mod watch;

/// Blitzen's logging (the seed's `blitzen.logging`): `get_logger`, `set_logfile`,
/// `set_loglevel`, `disable`, `enable`.
pub mod logging {
    pub use blitzen_common::logging::{
        Logger, LoggingError, disable, enable, flush, get_logger, set_logfile, set_loglevel,
    };
}

pub use awaits::{Completed, ResultsFuture, TaskFuture};
pub use blitzen_client::AgentError;
pub use blitzen_common::builtin::{
    self, CommandOutput, CommandSpec, command, echo, program, sleep,
};
pub use blitzen_common::inputs::{Accepts, Input};
pub use blitzen_common::needs::{MAX_RESOURCES, Needs};
pub use blitzen_common::pool::{PoolError, StatusSnapshot, WorkerCommand};
pub use blitzen_common::registry::RegistryError;
pub use blitzen_common::{DecodeTarget, Task, TaskContext, TaskError, WorkerInfo, worker_main};
pub use blitzen_macros::task;
pub use blitzen_protocol::{
    Blob, Capacity, Captured, ExitReason, Finished, Outcome, Request, SizeError, SizeText,
    StdStream, parse_size,
};
pub use dispatcher::{Backend, Dispatcher, NamedTask};
pub use error::DispatchError;
pub use graphs::{After, Shared};
pub use multicore::{Multicore, MulticoreBuilder, MulticoreDispatcher};
pub use output::{
    OUTPUT_QUEUE_BYTES, Output, OutputLines, OutputReader, STREAM_BURST, STREAM_RATE,
};
pub use results::{Fetch, RunOptions, TaskId, TaskResult, Untyped};
pub use streams::{CompletedResult, Completion, Completions, Imap, ImapUnordered};
pub use table::DispatcherStats;
pub use tasks::Tasks;
pub use watch::Watch;

/// What `#[task]` expansions refer to. Not a stable API.
#[doc(hidden)]
pub use blitzen_common::__private;

/// The README and the book's pages (`docs/`), for the doc tests: every Rust example in them is
/// compiled, and run unless it says `no_run` (those start workers or reach a server).
#[cfg(doctest)]
pub mod book {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/multicore.md")]
    pub struct Multicore;
    #[doc = include_str!("../../docs/cluster.md")]
    pub struct Cluster;
    #[doc = include_str!("../../docs/async.md")]
    pub struct Async;
    #[doc = include_str!("../../docs/graphs.md")]
    pub struct Graphs;
    #[doc = include_str!("../../docs/durability.md")]
    pub struct Durability;
    #[doc = include_str!("../../docs/security.md")]
    pub struct Security;
    #[doc = include_str!("../../docs/observing.md")]
    pub struct Observing;
    #[doc = include_str!("../../docs/deploying.md")]
    pub struct Deploying;
    #[doc = include_str!("../../docs/performance.md")]
    pub struct Performance;
    #[doc = include_str!("../../docs/architecture.md")]
    pub struct Architecture;
    #[doc = include_str!("../../docs/development.md")]
    pub struct Development;
    #[doc = include_str!("../../python/README.md")]
    pub struct Python;
}
