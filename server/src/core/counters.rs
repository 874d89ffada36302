//! What the server counts for observers: finished tasks per second ([`Rate`]), outcomes
//! ([`Outcomes`]), per session ([`SessionStats`]) and for the whole server ([`ServerStats`]).
//! Leaf types: they know nothing of the core that fills them (`stats` does) or of the status
//! built from them.

use std::collections::VecDeque;
use std::time::Instant;

use blitzen_protocol::Outcome;
#[cfg(doc)]
use blitzen_protocol::status::{FAILURES_KEPT, RECENT_FAILURES};
use blitzen_protocol::status::{Failure, HISTORY_SECONDS};

#[cfg(doc)]
use super::KindId;

/// Tasks finished per second, over the last [`HISTORY_SECONDS`] seconds.
#[derive(Debug, Clone)]
pub(super) struct Rate {
    /// When second 0 began.
    origin: Instant,
    /// The second the last bucket counts (seconds since `origin`).
    second: u64,
    /// Counts per second, oldest first; the last is `second`.
    buckets: VecDeque<u32>,
    /// Counted this turn, not yet in a bucket.
    unfolded: u32,
}

impl Rate {
    /// Whether something was counted this turn and not yet put in its second.
    pub(super) fn has_unfolded(&self) -> bool {
        self.unfolded > 0
    }

    pub(super) fn new(origin: Instant) -> Self {
        Self { origin, second: 0, buckets: VecDeque::from([0]), unfolded: 0 }
    }

    /// One more finished task (put into its second by [`fold`](Self::fold)).
    pub(super) fn count(&mut self) {
        self.unfolded += 1;
    }

    /// Moves the buckets on to `now` and adds what was counted since the last fold.
    pub(super) fn fold(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        while self.second < second {
            self.second += 1;
            self.buckets.push_back(0);
            if self.buckets.len() > HISTORY_SECONDS {
                self.buckets.pop_front();
            }
            if self.second + (HISTORY_SECONDS as u64) < second {
                // A long quiet spell: every bucket is zero.
                self.buckets.iter_mut().for_each(|b| *b = 0);
                self.second = second;
            }
        }
        if let Some(last) = self.buckets.back_mut() {
            *last = last.saturating_add(self.unfolded);
        }
        self.unfolded = 0;
    }

    /// The counts of the last [`HISTORY_SECONDS`] seconds up to `now`, oldest first.
    pub(super) fn history(&self, now: Instant) -> Vec<u32> {
        let mut rate = self.clone();
        rate.fold(now);
        let mut history = vec![0; HISTORY_SECONDS - rate.buckets.len()];
        history.extend(rate.buckets.iter());
        history
    }

    /// Tasks per second over the last full minute (the second in progress left out).
    pub(super) fn per_second(&self, now: Instant) -> f64 {
        let history = self.history(now);
        let minute = &history[history.len() - 61..history.len() - 1];
        let elapsed = now.saturating_duration_since(self.origin).as_secs().clamp(1, 60);
        minute.iter().map(|&n| f64::from(n)).sum::<f64>() / elapsed as f64
    }
}

/// How the tasks of a session (or the whole server, or an agent) ended.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcomes {
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Outcomes {
    pub(super) fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Value(_) => self.done += 1,
            Outcome::Cancelled { .. } => self.cancelled += 1,
            _ => self.failed += 1,
        }
    }

    pub(super) fn finished(&self) -> u64 {
        self.done + self.failed + self.cancelled
    }
}

/// A session's counts, kept with its driver.
#[derive(Debug, Clone)]
pub(super) struct SessionStats {
    pub outcomes: Outcomes,
    pub rate: Rate,
    /// Its latest failures, at most [`FAILURES_KEPT`], oldest first.
    pub failures: VecDeque<Failure>,
}

impl SessionStats {
    pub(super) fn new(now: Instant) -> Self {
        Self { outcomes: Outcomes::default(), rate: Rate::new(now), failures: VecDeque::new() }
    }
}

/// The server's own counts.
#[derive(Debug)]
pub(super) struct ServerStats {
    pub started: Instant,
    pub outcomes: Outcomes,
    pub rate: Rate,
    /// The latest failures of every session, at most [`RECENT_FAILURES`], oldest first.
    pub recent_failures: VecDeque<Failure>,
    /// How the tasks of each kind ended, indexed by [`KindId`]: a vector, so that counting costs
    /// no hashing per task.
    pub by_kind: Vec<Outcomes>,
}

impl ServerStats {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            outcomes: Outcomes::default(),
            rate: Rate::new(now),
            recent_failures: VecDeque::new(),
            by_kind: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rate_counts_per_second_and_forgets_old_seconds() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        for _ in 0..30 {
            rate.count();
        }
        rate.fold(t0 + Duration::from_millis(500));
        for _ in 0..90 {
            rate.count();
        }
        rate.fold(t0 + Duration::from_millis(2100));
        let history = rate.history(t0 + Duration::from_millis(2500));
        assert_eq!(history.len(), HISTORY_SECONDS);
        assert_eq!(&history[HISTORY_SECONDS - 3..], &[30, 0, 90]);
        // Over the full seconds so far (0 and 1; 2 is in progress): 30 in 2 s.
        assert_eq!(rate.per_second(t0 + Duration::from_millis(2500)), 15.0);
        let later = t0 + Duration::from_secs(10 * HISTORY_SECONDS as u64);
        assert!(rate.history(later).iter().all(|&n| n == 0), "old seconds are forgotten");
        assert_eq!(rate.per_second(later), 0.0);
    }
}
