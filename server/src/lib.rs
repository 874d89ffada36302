//! `blitzen-server`: the task queue and result cache of a Blitzen cluster.
//!
//! Drivers (`blitzen::distributed::DistributedDispatcher`) submit tasks; agents
//! (`blitzen-client`) announce the tasks their binary has and how many workers they run; the
//! server pushes each task to an agent with free capacity and pushes each result back to the
//! driver that submitted it. It never decodes task arguments or results.
//!
//! - [`cli`]: the binary's command line — its flags, serving with them, and the subcommands
//!   that ask a running server.
//! - [`config`]: [`ServerConfig`], every setting, with the defaults of the binary.
//! - [`server`]: [`Server`] — bind (refusing unsafe settings), then run until a shutdown token
//!   is cancelled; [`serve_until`], the whole life of a server until a duration or a signal.
//! - [`autoscale`]: agents asked of a scheduler (Slurm) as ready tasks need them, each leaving
//!   when idle or before its time limit.
//! - [`observe`]: the observer's side — one request to a server (status, failures, cancel)
//!   and its answer rendered for a person; what `blitzen-server status` runs.
//! - `dashboard` (private): the web dashboard, fed a snapshot of the core once a second.
//! - `session` (private): one task per connection: the handshake, then frames in as events.
//! - `store` (private): the data directory — its tables, and the writer thread that commits
//!   each turn's changes.
//! - `core` (private): the single owner of all state — queue, agents, drivers, results.
//!
//! How they connect: `Server::run` accepts connections and starts a session for each; sessions
//! turn frames into events for the core and hand it a writer for their connection; the core
//! decides and writes back.

pub mod autoscale;
pub mod cli;
pub mod config;
mod core;
mod dashboard;
pub mod observe;
pub mod server;
mod session;
mod store;

pub use blitzen_net::{Secret, Secrets};
pub use blitzen_protocol::cluster::DEFAULT_PORT;
pub use config::ServerConfig;
pub use server::{ServeError, Server, serve_until};
pub use store::StoreError;
