//! [`Handoff`]: how many tasks the dispatcher handed to its connection, and how many of them
//! the server has taken (`wait_accepted`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::DispatchError;

/// Tasks handed to the connection, and how many of them the server has taken.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    sent: AtomicU64,
    state: Mutex<HandoffState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct HandoffState {
    accepted: u64,
    /// Why the connection ended, once it has.
    ended: Option<String>,
}

impl Handoff {
    /// One more task handed to the connection.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks until the server has taken every task handed over so far, or `within` has
    /// passed (see `DistributedDispatcher::wait_accepted`).
    pub(crate) fn wait_accepted(&self, within: Duration) -> Result<(), DispatchError> {
        let target = self.sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + within;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.accepted >= target {
                return Ok(());
            }
            if let Some(reason) = &state.ended {
                return Err(DispatchError::Disconnected(reason.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DispatchError::WaitTimedOut {
                    waited: within,
                    pending: (target - state.accepted) as usize,
                    total: target as usize,
                    detail: Some("the server has not taken them yet".into()),
                });
            }
            state =
                self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// The server's count of tasks taken.
    pub(crate) fn accepted(&self, count: u64) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).accepted = count;
        self.changed.notify_all();
    }

    /// The connection is over: nothing more will be taken.
    pub(crate) fn end(&self, reason: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ended.get_or_insert_with(|| reason.to_string());
        drop(state);
        self.changed.notify_all();
    }
}
