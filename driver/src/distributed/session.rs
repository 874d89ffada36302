//! A driver's session: its name (and the origin of its task ids, the same in every process of
//! the session), attaching to a session another process left on the server, and detaching.

use std::sync::atomic::Ordering;

use super::Cluster;
use crate::dispatcher::Dispatcher;
use crate::error::DispatchError;

/// The origin of the task ids of a session's dispatchers: the same in every process, so ids
/// saved by one are valid in another attached to the session. The top bit keeps them apart
/// from the numbered origins of other dispatchers.
pub(super) fn session_origin(session: &str) -> u32 {
    let hash = blitzen_common::task::fingerprint(session);
    ((hash ^ (hash >> 32)) as u32) | 0x8000_0000
}

/// A fresh session name: 128 random bits in hex.
pub(super) fn random_session() -> String {
    match blitzen_net::secret::nonce() {
        Ok(bytes) => bytes[..16].iter().map(|b| format!("{b:02x}")).collect(),
        // No randomness from the system: unique enough within this host.
        Err(_) => format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    }
}

impl Dispatcher<Cluster> {
    /// Names this driver's session (default: a random one). A reconnecting connection takes
    /// its session over; two dispatchers connected at once with one name take it from each
    /// other, so keep names unique.
    pub fn with_session(mut self, name: impl Into<String>) -> Self {
        self.backend.session = name.into();
        self.table.set_origin(session_origin(&self.backend.session));
        self
    }

    /// A dispatcher for a session another process left on the server (it ended with
    /// [`detach`](Self::detach), or lost its connection): connects now, and holds every task
    /// of the session the server still has — queued, running, or with a result not yet
    /// fetched. Fetch them with the [`TaskId`](crate::TaskId)s the other process saved (they
    /// serialize with serde), or all at once with [`join`](Self::join). Fails if the server
    /// knows no such session.
    pub fn attach(server: impl AsRef<str>, session: &str) -> Result<Self, DispatchError> {
        Self::new(server).with_session(session).attached()
    }

    /// [`attach`](Self::attach) with this dispatcher's settings (secret, TLS, timeouts) to
    /// the session [`with_session`](Self::with_session) named.
    pub fn attached(mut self) -> Result<Self, DispatchError> {
        self.backend.attach = true;
        self.connect()?;
        Ok(self)
    }

    /// Ends this dispatcher without a goodbye: the server keeps its session — unfinished tasks
    /// go on, results wait (within `--result-ttl` and `--max-results`) — for a process that
    /// [`attach`](Self::attach)es to it later. Save [`session`](Self::session) and the task ids
    /// first.
    pub fn detach(self) {
        self.backend.detached.store(true, Ordering::SeqCst);
    }

    /// The first half of [`detach`](Self::detach): results that arrive from now on are not
    /// acknowledged, so the server keeps them for the process that attaches; those that arrived
    /// before are this dispatcher's (fetch them, or note that they ended, before detaching).
    /// Without it, a result that arrives while a program saves its task ids and detaches is
    /// acknowledged here and never reaches the process that attaches.
    pub fn keep_results_at_the_server(&self) {
        self.backend.detached.store(true, Ordering::SeqCst);
    }

    /// This driver's session.
    pub fn session(&self) -> &str {
        &self.backend.session
    }
}
