//! [`DispatchError`]: a dispatcher call that could not be served.

use std::time::Duration;

use blitzen_net::{ConnectError, SecretError};
use blitzen_server::ServeError;

/// A dispatcher call that could not be served. Task failures are not these: they are
/// [`TaskError`](crate::TaskError)s inside the results.
#[derive(thiserror::Error)]
pub enum DispatchError {
    /// The id was not issued by this dispatcher. A retry cannot help.
    #[error("task {0} was not submitted to this dispatcher")]
    UnknownTask(u64),
    /// The result was already fetched and removed (fetch with `Fetch::keep()` to keep it).
    #[error("the result of task {0} was already fetched")]
    AlreadyFetched(u64),
    /// The wait limit passed first; the results stay in the dispatcher.
    #[error("waited {waited:?}: {pending} of {total} tasks are still unfinished{}",
            detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    WaitTimedOut {
        /// The limit.
        waited: Duration,
        /// Tasks not finished.
        pending: usize,
        /// Tasks asked for.
        total: usize,
        /// What is known about why, e.g. that no agent can run a task.
        detail: Option<String>,
    },
    /// A blocking wait was called on the thread of a current-thread Tokio runtime, where it
    /// would stall every task of that runtime until the results came. Await the async twin
    /// named here instead (or make the call inside `tokio::task::spawn_blocking`). Retrying the
    /// same call there cannot help.
    #[error(
        "`{call}` waits, and this thread runs a current-thread Tokio runtime: waiting here \
         would stall every task of that runtime until the results come; await `{instead}` \
         instead, or make the call inside `tokio::task::spawn_blocking`"
    )]
    WouldStall {
        /// The blocking call.
        call: &'static str,
        /// Its async twin.
        instead: &'static str,
    },
    /// The worker pool could not start.
    #[error(transparent)]
    Pool(#[from] blitzen_common::pool::PoolError),
    /// This process was started as a worker but `main` did not call `blitzen::worker_main()`
    /// first, and went on to create a dispatcher. Add the call.
    #[error(
        "this process is a Blitzen worker whose main() did not call blitzen::worker_main() \
         first thing; add that call at the top of main"
    )]
    WorkerEntryMissing,
    /// `attach` named a session the server does not know (it never had it, its driver said
    /// goodbye, or the server restarted).
    #[error(
        "the server has no session `{0}` to attach to (its driver ended with a goodbye rather \
         than `detach`, its results expired, or the server restarted)"
    )]
    UnknownSession(String),
    /// The dispatcher's runtime thread could not start (the system is out of threads or
    /// memory).
    #[error("cannot start the dispatcher's runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The cluster's shared secret is unusable (the file is missing, the secret too short).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The cluster server could not be reached within the connect timeout, or refused this
    /// driver ([`ConnectError::is_refusal`]: retrying cannot help).
    #[error("{}", connect_message(server, cause))]
    Connect {
        /// The server, `host:port`.
        server: String,
        /// What went wrong.
        #[source]
        cause: ConnectError,
    },
    /// The connection to the server has ended (the server went away or shut down); its
    /// unfinished tasks ended [`TaskError::Lost`](crate::TaskError::Lost).
    #[error("the connection to the server has ended: {0}")]
    Disconnected(String),
    /// A value to share could not be encoded.
    #[error("the shared value cannot be encoded: {0}")]
    Unencodable(String),
    /// The dispatcher was shut down.
    #[error("the dispatcher is shut down")]
    ShutDown,
    /// The server address does not resolve.
    #[error("cannot resolve {server}: {source}")]
    Resolve {
        /// The address given.
        server: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// `spawn_server` or [`LocalCluster`](crate::distributed::LocalCluster) could not serve
    /// (the address is taken, or not allowed without a secret).
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The agent of a [`LocalCluster`](crate::distributed::LocalCluster) did not connect in
    /// time; its log says why.
    #[error("the local cluster's agent did not connect within {0:?}; its log says why")]
    LocalAgentMissing(Duration),
    /// A question to the server about its cluster got no answer.
    #[error(transparent)]
    Observe(#[from] blitzen_server::observe::ObserveError),
    /// `spawn_client` stopped with an error retrying cannot fix.
    #[error(transparent)]
    Agent(#[from] blitzen_client::AgentError),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn connect_message(server: &str, cause: &ConnectError) -> String {
    if cause.is_refusal() {
        format!("cannot connect to the Blitzen server at {server}: {cause}")
    } else {
        format!("cannot reach the Blitzen server at {server}: {cause}")
    }
}
