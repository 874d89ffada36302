//! What a person's tool asks a running server, and its answers: [`FromObserver`] and
//! [`ToObserver`].

use serde::{Deserialize, Serialize};

/// Observer → server: one request at a time, each answered by one [`ToObserver`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromObserver {
    /// The cluster at a glance: answered by [`ToObserver::Status`].
    Status,
    /// A session's failed tasks, most recent last (the server keeps the last
    /// [`FAILURES_KEPT`](crate::status::FAILURES_KEPT) of each): answered by
    /// [`ToObserver::Failures`].
    Failures {
        /// The session's name.
        session: String,
    },
    /// Cancel tasks of a session: answered by [`ToObserver::Cancelled`].
    Cancel {
        /// The session's name.
        session: String,
        /// The driver's task ids; empty: every task of the session not finished yet.
        ids: Vec<u64>,
    },
    /// An autoscaling server's autoscaler, paused after repeated failures (or backing off
    /// after one), asks again from now on: answered by [`ToObserver::Resumed`].
    ResumeAutoscaling,
}

/// Server → observer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToObserver {
    /// The cluster now.
    Status(Box<crate::status::ClusterStatus>),
    /// A session's failed tasks.
    Failures(Vec<crate::status::Failure>),
    /// What a cancel did.
    Cancelled(crate::status::CancelReport),
    /// The autoscaler asks again; why it had paused, if it had.
    Resumed {
        /// Its pause's reason; `None`: it was not paused (a back-off, if any, is over).
        was_paused: Option<String>,
    },
    /// The request could not be served (an unknown session); said in words.
    Error(String),
}
