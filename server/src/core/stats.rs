//! Counting results for observers ([`Core::count_result`], into the counters of `counters`),
//! and [`Core::status`], the cluster at a glance built from them.
//!
//! Counting is on the hot path (every result), so it is a few additions per result: the clock
//! is read once per turn ([`Core::fold_rates`]), and a failure's text is rendered only for
//! failures.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use blitzen_common::TaskError;
use blitzen_common::error::{STDERR_TAIL_BYTES, STDERR_TAIL_LINES, TaskContext};
use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::ids::{ConnId, DriverTaskId};
use blitzen_protocol::status::{
    AgentStatus, ClusterStatus, FAILURES_KEPT, Failure, RECENT_FAILURES, ServerStatus,
    SessionStatus, TaskCounts,
};

use super::counters::Outcomes;
use super::tasks::DriverKey;
use super::{Core, KindId};

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
    pub(super) fn count_result(
        &mut self,
        driver_key: DriverKey,
        report: &Report<DriverTaskId>,
        kind: Option<KindId>,
    ) {
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
        let Some(d) = self.drivers.get_mut(&driver_key) else { return };
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
        if self.stats.rate.has_unfolded() {
            self.stats.rate.fold(now);
        }
        for d in self.drivers.values_mut() {
            if d.stats.rate.has_unfolded() {
                d.stats.rate.fold(now);
            }
        }
    }

    /// The cluster now.
    pub(super) fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        // Tasks agents hold, by driver: one pass over what agents hold (at most their credit).
        let mut held_by: HashMap<DriverKey, u64> = HashMap::new();
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
                    cache_used: a.cache.used,
                    cache_size: a.cache.size,
                    allocation: a.allocation.clone(),
                    ends_in_ms: (a.ends_at)
                        .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                    leaving: a.leaving.as_ref().map(|(why, _)| why.clone()),
                }
            })
            .collect();
        let mut sessions: Vec<(&DriverKey, &super::drivers::Driver)> =
            self.drivers.iter().collect();
        sessions.sort_by_key(|(conn, _)| **conn);
        let sessions = sessions
            .into_iter()
            .map(|(&conn, d)| {
                let held = held_by.get(&conn).copied().unwrap_or(0);
                let waiting = self.waiting_of(conn);
                let running = running_by.get(d.session.as_str()).copied().unwrap_or(0).min(held);
                SessionStatus {
                    name: d.session.clone(),
                    driver: d.name.clone(),
                    connected: d.tx.is_some(),
                    submitted: d.accepted,
                    queued: (d.live as u64).saturating_sub(held + waiting),
                    waiting,
                    prefetched: held - running,
                    running,
                    done: d.stats.outcomes.done,
                    failed: d.stats.outcomes.failed,
                    cancelled: d.stats.outcomes.cancelled,
                    throughput: d.stats.rate.per_second(now),
                }
            })
            .collect();
        let (shared_values, shared_bytes) = self.shares.held();
        ClusterStatus {
            server: ServerStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_ms: now.saturating_duration_since(self.stats.started).as_millis() as u64,
                durable: self.durable.is_some(),
                queued: (self.tasks.len() as u64).saturating_sub(held + self.graph.len() as u64),
                waiting: self.graph.len() as u64,
                prefetched: held - running,
                running,
                results_held: self.cache.len() as u64,
                shared_values,
                shared_bytes,
                shared_bytes_sent: self.shares.sent_bytes,
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
            autoscale: self.autoscale.as_deref().cloned(),
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
