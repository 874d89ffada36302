//! A live, thread-safe view of a pool's workers, for callers outside its runtime.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What the pool looks like now. Updated by the scheduler; waited on with a condition variable,
/// so blocking waits are woken by changes rather than polling.
#[derive(Debug)]
pub struct PoolStatus {
    state: Mutex<StatusSnapshot>,
    changed: Condvar,
}

/// A copy of the pool's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Workers the pool keeps alive.
    pub target: usize,
    /// Process ids of the workers that are up and ready, by slot.
    pub ready_pids: Vec<u32>,
    /// Workers started to replace dead ones since the pool started.
    pub replacements: u64,
    /// Set when the pool has given up (workers cannot start) or stopped.
    pub stopped: Option<String>,
}

impl PoolStatus {
    pub(super) fn new(target: usize) -> Self {
        Self {
            state: Mutex::new(StatusSnapshot {
                target,
                ready_pids: Vec::new(),
                replacements: 0,
                stopped: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Blocks until `pred` holds or `timeout` passes; returns the state that satisfied it.
    /// Blocking: call it from ordinary threads, not from async code.
    pub fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&StatusSnapshot) -> bool,
    ) -> Option<StatusSnapshot> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if pred(&state) {
                return Some(state.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state =
                self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }
}
