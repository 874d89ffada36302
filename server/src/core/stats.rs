//! What the server counts for observers: finished tasks per second, outcomes per session and
//! per agent, recent failures with their whole error — and [`Core::status`], the cluster at a
//! glance built from them.
//!
//! Counting is on the hot path (every result), so it is a few additions per result: the clock
//! is read once per turn ([`Core::fold_rates`]), and a failure's text is rendered only for
//! failures.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use blitzen_common::TaskError;
use blitzen_common::error::{STDERR_TAIL_BYTES, STDERR_TAIL_LINES, TaskContext};
use blitzen_protocol::Outcome;
use blitzen_protocol::cluster::TaskReport;
use blitzen_protocol::ids::ConnId;
use blitzen_protocol::status::{
    AgentStatus, ClusterStatus, FAILURES_KEPT, Failure, HISTORY_SECONDS, RECENT_FAILURES,
    ServerStatus, SessionStatus, TaskCounts,
};

use super::{Core, KindId};

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

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn push_capped<T>(list: &mut VecDeque<T>, item: T, cap: usize) {
    if list.len() >= cap {
        list.pop_front();
    }
    list.push_back(item);
}

impl Core {
    /// Counts a result about to go to driver `conn`; a failure is kept with its whole error.
    pub(super) fn count_result(&mut self, conn: ConnId, report: &TaskReport, kind: Option<KindId>) {
        let outcome = &report.run.outcome;
        self.stats.outcomes.count(outcome);
        self.stats.rate.count();
        if let Some(kind) = kind {
            let by_kind = &mut self.stats.by_kind;
            if by_kind.len() <= kind.index() {
                by_kind.resize(kind.index() + 1, Outcomes::default());
            }
            by_kind[kind.index()].count(outcome);
        }
        let Some(d) = self.drivers.get_mut(&conn) else { return };
        d.stats.outcomes.count(outcome);
        d.stats.rate.count();
        if matches!(outcome, Outcome::Value(_) | Outcome::Cancelled { .. }) {
            return;
        }
        let kinds = &self.kinds;
        let task =
            kind.map_or_else(|| "unknown".to_string(), |k| kinds[k.index()].shown().to_string());
        let stderr_tail = report.run.stderr.last_lines(STDERR_TAIL_LINES, STDERR_TAIL_BYTES);
        let ctx = || TaskContext {
            id: report.id.get(),
            task: task.clone().into(),
            worker: report.worker.clone(),
            stderr_tail,
        };
        let Err(error) = TaskError::from_outcome(outcome, ctx, "") else { return };
        let failure = Failure {
            session: d.session.clone(),
            id: report.id.get(),
            task,
            host: report.worker.as_ref().and_then(|w| w.host.clone()),
            pid: report.worker.as_ref().map(|w| w.pid),
            kind: error.kind_name().to_string(),
            error: error.to_string(),
            at_unix_ms: unix_ms(),
        };
        push_capped(&mut d.stats.failures, failure.clone(), FAILURES_KEPT);
        push_capped(&mut self.stats.recent_failures, failure, RECENT_FAILURES);
    }

    /// Puts what was counted this turn into its second.
    pub(super) fn fold_rates(&mut self) {
        let now = Instant::now();
        if self.stats.rate.unfolded > 0 {
            self.stats.rate.fold(now);
        }
        for d in self.drivers.values_mut() {
            if d.stats.rate.unfolded > 0 {
                d.stats.rate.fold(now);
            }
        }
    }

    /// The cluster now.
    pub(super) fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        // Tasks agents hold, by driver: one pass over what agents hold (at most their credit).
        let mut held_by: HashMap<ConnId, u64> = HashMap::new();
        for key in self.agents.values().flat_map(|a| a.running.keys()) {
            if let Some(task) = self.tasks.get(*key) {
                *held_by.entry(task.driver).or_default() += 1;
            }
        }
        // Of those, the ones on a worker, by session, as the agents last said.
        let mut running_by: HashMap<&str, u64> = HashMap::new();
        let reported = self.agents.values().flat_map(|a| a.reported.iter());
        for task in reported.filter_map(|w| w.task.as_ref()) {
            *running_by.entry(task.session.as_str()).or_default() += 1;
        }
        let held: u64 = self.agents.values().map(|a| a.running.len() as u64).sum();
        let running: u64 = running_by.values().sum::<u64>().min(held);
        let mut agents: Vec<(&ConnId, &super::agents::Agent)> = self.agents.iter().collect();
        agents.sort_by_key(|(conn, _)| **conn);
        let agents = agents
            .into_iter()
            .map(|(conn, a)| {
                // As the agent last said (every half second while its workers are busy).
                let worker_states = a.reported.clone();
                AgentStatus {
                    conn: conn.get(),
                    host: a.host.clone(),
                    workers: a.workers as u32,
                    busy: worker_states.iter().filter(|w| w.task.is_some()).count() as u32,
                    held: a.running.len() as u64,
                    done: a.outcomes.done + a.outcomes.cancelled,
                    failed: a.outcomes.failed,
                    connected_for_ms: now.saturating_duration_since(a.connected_at).as_millis()
                        as u64,
                    last_heard_ms: now.saturating_duration_since(a.last_heard).as_millis() as u64,
                    worker_states,
                    capacity: a.resources.clone(),
                    used: a.used.clone(),
                }
            })
            .collect();
        let mut sessions: Vec<(&ConnId, &super::drivers::Driver)> = self.drivers.iter().collect();
        sessions.sort_by_key(|(conn, _)| **conn);
        let sessions = sessions
            .into_iter()
            .map(|(&conn, d)| {
                let held = held_by.get(&conn).copied().unwrap_or(0);
                let running = running_by.get(d.session.as_str()).copied().unwrap_or(0).min(held);
                SessionStatus {
                    name: d.session.clone(),
                    driver: d.name.clone(),
                    connected: d.tx.is_some(),
                    submitted: d.accepted,
                    queued: (d.live as u64).saturating_sub(held),
                    prefetched: held - running,
                    running,
                    done: d.stats.outcomes.done,
                    failed: d.stats.outcomes.failed,
                    cancelled: d.stats.outcomes.cancelled,
                    throughput: d.stats.rate.per_second(now),
                }
            })
            .collect();
        ClusterStatus {
            server: ServerStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_ms: now.saturating_duration_since(self.stats.started).as_millis() as u64,
                durable: self.durable.is_some(),
                queued: (self.tasks.len() as u64).saturating_sub(held),
                prefetched: held - running,
                running,
                results_held: self.cache.len() as u64,
                finished: self.stats.outcomes.finished(),
                failed: self.stats.outcomes.failed,
                cancelled: self.stats.outcomes.cancelled,
                throughput: self.stats.rate.per_second(now),
                finished_per_second: self.stats.rate.history(now),
            },
            agents,
            sessions,
            recent_failures: self.stats.recent_failures.iter().cloned().collect(),
            tasks: self.task_counts(),
            restart: self.restart_status(),
        }
    }

    /// [`ServerStats::by_kind`] added up by the name people see, sorted by it.
    fn task_counts(&self) -> Vec<TaskCounts> {
        let mut by_name: std::collections::BTreeMap<&str, Outcomes> = Default::default();
        for (i, counts) in self.stats.by_kind.iter().enumerate() {
            if counts.finished() == 0 {
                continue;
            }
            let sum = by_name.entry(self.kinds[i].shown()).or_default();
            sum.done += counts.done;
            sum.failed += counts.failed;
            sum.cancelled += counts.cancelled;
        }
        (by_name.into_iter())
            .map(|(task, o)| TaskCounts {
                task: task.to_string(),
                done: o.done,
                failed: o.failed,
                cancelled: o.cancelled,
            })
            .collect()
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
