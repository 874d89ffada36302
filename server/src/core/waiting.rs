//! Tasks that wait because no connected agent can run them: the warnings their drivers hear,
//! repeated with growing intervals while the wait lasts, and the tasks that give up waiting.
//!
//! A kind of task is *stranded* while tasks of it are queued and no connected agent has it
//! (none is connected, or none was built with that name and signature). It becomes stranded
//! when such a task is submitted, or when the last agent that had it leaves; it stops being
//! stranded when an agent that has it joins, or when nothing of it is queued any more. Each
//! stranding is an *episode* with its own number, so that a task's limit counts one unbroken
//! wait: an agent that joins and leaves again starts the count afresh.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::cluster::ToDriver;
use blitzen_protocol::ids::{DriverTaskId, TaskKey};
use tracing::{info, warn};

use super::agents::Agent;
use super::tasks::DriverKey;
use super::{Core, KindId};

/// The first warning about a stranded kind comes this long after it was stranded: an agent that
/// is starting, or reconnecting, is no reason to warn.
const FIRST_WARNING: Duration = Duration::from_secs(1);
/// The interval after the first warning; it doubles after each warning.
const REPEAT: Duration = Duration::from_secs(10);
/// The longest interval between warnings.
const MAX_REPEAT: Duration = Duration::from_secs(300);

/// A kind no connected agent can run, while tasks of it are queued.
#[derive(Debug)]
pub(super) struct Stranded {
    /// When the episode began.
    pub since: Instant,
    /// Its number, unique across the server's life.
    pub episode: u64,
    /// When its drivers are warned next.
    pub next_warning: Instant,
    /// The interval after the next warning.
    pub interval: Duration,
}

/// When a queued task with an unrunnable limit gives up, if its kind is still stranded in the
/// same episode by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GiveUp {
    /// The start of its wait plus its limit.
    pub at: Instant,
    /// The task.
    pub key: TaskKey,
    /// The episode it waits in.
    pub episode: u64,
}

impl Ord for GiveUp {
    /// Earliest first in a `BinaryHeap` (a max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.key, other.episode).cmp(&(self.at, self.key, self.episode))
    }
}

impl PartialOrd for GiveUp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Core {
    /// Whether a connected agent has tasks of `kind` and could fit what they ask for.
    pub(super) fn can_run(&self, kind: KindId) -> bool {
        self.agents.values().any(|a| self.could_run(a, kind))
    }

    /// Whether `agent` has tasks of `kind` and could fit what they ask for, once what it runs
    /// has drained.
    pub(super) fn could_run(&self, agent: &Agent, kind: KindId) -> bool {
        agent.kinds.contains_key(&self.base(kind))
            && (self.kind(kind).request.as_ref())
                .is_none_or(|r| agent.resources.shortfall(r).is_none())
    }

    /// Marks `kind` stranded from `now` unless it already is; returns the episode.
    fn strand(&mut self, kind: KindId, now: Instant) -> u64 {
        if let Some(s) = self.stranded.get(&kind) {
            return s.episode;
        }
        self.episodes += 1;
        let episode = self.episodes;
        let next_warning = now + FIRST_WARNING;
        self.stranded
            .insert(kind, Stranded { since: now, episode, next_warning, interval: REPEAT });
        episode
    }

    /// Newly queued tasks of a kind no connected agent can run: the kind is stranded, the
    /// driver notes why, and each task with a limit is set to give up.
    pub(super) fn queued_unrunnable(
        &mut self,
        driver: DriverKey,
        kind: KindId,
        tasks: &[(DriverTaskId, TaskKey)],
        now: Instant,
    ) {
        let episode = self.strand(kind, now);
        for &(_, key) in tasks {
            self.set_give_up(key, episode, now);
        }
        let reason = self.why_unrunnable(kind);
        if let Some(tx) = self.drivers.get(&driver).and_then(|d| d.tx.as_ref()) {
            let ids = tasks.iter().map(|&(id, _)| id).collect();
            let _ = tx.send(ToDriver::Waiting { ids, reason });
        }
    }

    fn set_give_up(&mut self, key: TaskKey, episode: u64, now: Instant) {
        if let Some(limit) = self.tasks.get(key).and_then(|t| t.unrunnable_limit()) {
            let at = now + limit;
            self.give_ups.push(GiveUp { at, key, episode });
        }
    }

    /// An agent joined: the kinds it can run are no longer stranded.
    pub(super) fn kinds_runnable(&mut self, host: &str) {
        let runnable: Vec<KindId> =
            self.stranded.keys().copied().filter(|&k| self.can_run(k)).collect();
        for kind in runnable {
            if let Some(s) = self.stranded.remove(&kind) {
                let name = &self.kind(kind).name;
                info!(task = %name, %host, waited = ?s.since.elapsed(), "an agent that can run waiting tasks joined");
            }
        }
    }

    /// An agent left: each kind it had (with whatever request) that no other agent can run,
    /// and of which tasks are queued, is stranded; its queued tasks note why, and those with a
    /// limit are set to give up.
    pub(super) fn kinds_left(&mut self, kinds: Vec<KindId>, now: Instant) {
        let bases: Vec<KindId> = kinds.iter().map(|&k| self.base(k)).collect();
        let kinds: Vec<KindId> = (0..self.kinds.len() as u32)
            .map(KindId)
            .filter(|&k| bases.contains(&self.base(k)))
            .collect();
        for kind in kinds {
            if self.can_run(kind) || self.stranded.contains_key(&kind) {
                continue;
            }
            let queued = self.queued_of(kind);
            if queued.is_empty() {
                continue;
            }
            let episode = self.strand(kind, now);
            let reason = self.why_unrunnable(kind);
            for (driver, tasks) in queued {
                for &(_, key) in &tasks {
                    self.set_give_up(key, episode, now);
                }
                if let Some(tx) = self.drivers.get(&driver).and_then(|d| d.tx.as_ref()) {
                    let ids = tasks.iter().map(|&(id, _)| id).collect();
                    let _ = tx.send(ToDriver::Waiting { ids, reason: reason.clone() });
                }
            }
        }
    }

    /// The queued tasks of `kind`, by driver.
    fn queued_of(&self, kind: KindId) -> Vec<(DriverKey, Vec<(DriverTaskId, TaskKey)>)> {
        let mut out = Vec::new();
        for (&driver, d) in &self.drivers {
            let Some(queue) = d.queues.get(&kind) else { continue };
            let tasks: Vec<_> = (queue.iter())
                .filter_map(|&key| {
                    self.tasks.get(key).filter(|t| t.agent.get().is_none()).map(|t| (t.id, key))
                })
                .collect();
            if !tasks.is_empty() {
                out.push((driver, tasks));
            }
        }
        out
    }

    /// How many tasks of `kind` each driver has queued (for a warning: no list of a million
    /// keys built to be counted).
    fn queued_counts(&self, kind: KindId) -> Vec<(DriverKey, usize)> {
        let mut out = Vec::new();
        for (&driver, d) in &self.drivers {
            let Some(queue) = d.queues.get(&kind) else { continue };
            let waiting = (queue.iter())
                .filter(|&&key| self.tasks.get(key).is_some_and(|t| t.agent.get().is_none()))
                .count();
            if waiting > 0 {
                out.push((driver, waiting));
            }
        }
        out
    }

    /// When [`Core::on_waiting_timer`] has something to do next.
    pub(super) fn next_waiting_timer(&self) -> Option<Instant> {
        let warning = self.stranded.values().map(|s| s.next_warning).min();
        let give_up = self.give_ups.peek().map(|g| g.at);
        warning.into_iter().chain(give_up).min()
    }

    /// Ends the tasks whose limit is up, and warns about stranded kinds that are due.
    pub(super) fn on_waiting_timer(&mut self, now: Instant) {
        self.give_up_waiting(now);
        let due: Vec<KindId> = (self.stranded.iter())
            .filter(|(_, s)| s.next_warning <= now)
            .map(|(&k, _)| k)
            .collect();
        for kind in due {
            self.warn_stranded(kind, now);
        }
    }

    /// Ends `Unrunnable` every task whose unbroken wait reached its limit.
    fn give_up_waiting(&mut self, now: Instant) {
        while let Some(&GiveUp { at, key, episode }) = self.give_ups.peek() {
            if at > now {
                break;
            }
            self.give_ups.pop();
            let Some(task) = self.tasks.get(key).filter(|t| t.agent.get().is_none()) else {
                continue;
            };
            let kind = task.kind;
            if self.stranded.get(&kind).is_none_or(|s| s.episode != episode) {
                continue;
            }
            let limit = task.unrunnable_limit().unwrap_or_default();
            let why = self.why_unrunnable(kind);
            // Its key stays in its queue and is skipped there: queues hold keys of ended tasks.
            let Some(task) = self.take_task(key) else { continue };
            let reason = format!(
                "{why} and none could run it for {limit:?} (its unrunnable limit); it was never \
                 started"
            );
            warn!(driver = %task.driver, task = %task.id, %reason, "task gave up waiting for an agent");
            self.report(
                task.driver,
                Report::unstarted(task.id, Outcome::Unrunnable { reason }),
                Some(task.kind),
            );
        }
    }

    /// Warns each driver with queued tasks of a stranded `kind`, and schedules the next
    /// warning; a kind with nothing queued any more is no longer stranded.
    fn warn_stranded(&mut self, kind: KindId, now: Instant) {
        let queued = self.queued_counts(kind);
        let Some(s) = self.stranded.get_mut(&kind) else { return };
        if queued.is_empty() {
            self.stranded.remove(&kind);
            return;
        }
        let waited = now.saturating_duration_since(s.since);
        s.next_warning = now + s.interval;
        s.interval = (s.interval * 2).min(MAX_REPEAT);
        let reason = self.why_unrunnable(kind);
        let total: usize = queued.iter().map(|&(_, n)| n).sum();
        warn!(tasks = total, waited = ?Duration::from_secs(waited.as_secs()), %reason, "tasks are waiting for an agent");
        for (driver, tasks) in queued {
            if let Some(tx) = self.drivers.get(&driver).and_then(|d| d.tx.as_ref()) {
                let _ = tx.send(ToDriver::Stalled {
                    tasks: tasks as u64,
                    waited_ms: waited.as_millis() as u64,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Why no connected agent can run tasks of `kind`, for the driver.
    pub(super) fn why_unrunnable(&self, kind: KindId) -> String {
        let wanted = self.kind(kind);
        let base = self.base(kind);
        let largest = (self.agents.values())
            .filter(|a| a.kinds.contains_key(&base))
            .max_by_key(|a| (a.resources.cpus, a.resources.memory));
        if let (Some(request), Some(largest)) = (&wanted.request, largest) {
            let shortfall = largest.resources.shortfall(request).unwrap_or_default();
            return format!(
                "no connected agent with `{}` has what it asks for ({request}): {shortfall} on \
                 the largest, {}, which has {}",
                wanted.name, largest.host, largest.resources
            );
        }
        let others: Vec<&str> = self
            .agents
            .values()
            .flat_map(|a| a.kinds.keys())
            .map(|&k| self.kind(k))
            .filter(|k| k.name == wanted.name)
            .map(|k| k.signature.as_str())
            .collect();
        if self.agents.is_empty() {
            format!("no agent is connected to run `{}`", wanted.name)
        } else if others.is_empty() {
            format!(
                "no connected agent has a task named `{}` (is it in the client binary? a crate \
                 of tasks must be named in its blitzen::tasks![])",
                wanted.name
            )
        } else {
            format!(
                "connected agents have `{}` with another signature ({}), not `{}`: build the \
                 client and the driver from the same task definitions",
                wanted.name,
                others.join(", "),
                wanted.signature
            )
        }
    }
}
