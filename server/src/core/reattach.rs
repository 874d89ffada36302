//! Agents re-attaching after a restart on the data directory.
//!
//! A restarted server does not know which of its restored tasks were running when it stopped:
//! the agents do. So it holds the restored tasks back from dispatch ([`Restart`]) while the
//! agents that were connected (saved in the data directory) come back. Each sends the numbers
//! (`seq`) of the tasks it still holds from the previous run; those the server still holds are
//! bound to it under new keys ([`ToAgent::Reattached`]) and finish there once — they are not
//! started again. When every such agent is back or known to have ended, or the hold's grace is
//! used up, the tasks nobody claimed are queued again, before everything submitted since.
//!
//! The hold is bounded however often the server restarts: `reattach_grace` is time the server
//! is up holding, summed over the restarts of one hold. The grace used so far is saved in the
//! data directory every [`SAVE_EVERY`], and each start counts that much up front, so a server
//! killed and started again goes on from where the last run got to rather than starting the
//! grace anew (a server restarting faster than the grace would otherwise hold the tasks for
//! ever), and even one that crash-loops faster than that releases them after
//! `reattach_grace / SAVE_EVERY` starts. Time the server is down does not count: agents cannot
//! re-attach to a server that is not there.
//!
//! An agent awaited stops being awaited when it re-attaches, or when a new agent process of
//! the same name on the same machine connects saying it replaces it: that process took over
//! the lock the old one held for as long as it ran, so the old one has ended and holds nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use blitzen_protocol::Request;
use blitzen_protocol::cluster::ToAgent;
use blitzen_protocol::ids::{ConnId, TaskKey};
use blitzen_protocol::status::RestartStatus;
use tracing::{info, warn};

use super::Core;
use super::deadlines::Deadline;
use super::tasks::OptionalConn;
use crate::store::Change;

/// How often a hold saves the grace it has used, and what each start of it counts against the
/// grace at least, however short it lives (a run killed sooner would otherwise use none). A
/// killed run loses at most this much of what it used.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// The restored tasks held back while the agents of the previous run re-attach.
#[derive(Debug)]
pub(super) struct Restart {
    /// When the tasks nobody claimed are queued again, whoever is missing.
    pub until: Instant,
    /// The grace used by the earlier runs of this hold.
    pub earlier: Duration,
    /// When this run started holding.
    pub started: Instant,
    /// When the grace used is saved next.
    pub next_save: Instant,
    /// Agents connected when the server stopped and not back yet: id → host.
    pub awaiting: HashMap<u64, String>,
    /// The restored tasks not claimed yet, by `seq`.
    pub held: HashMap<u64, TaskKey>,
}

impl Restart {
    /// The grace this hold has used by `now`, over every run of it.
    fn used(&self, now: Instant) -> Duration {
        self.earlier + now.saturating_duration_since(self.started).max(SAVE_EVERY)
    }
}

impl Core {
    /// Holds the restored tasks `held` (by `seq`) while `agents`, connected when the server
    /// stopped, come back, for what is left of `reattach_grace` after the `used_ms` that the
    /// earlier runs of this hold used (none: this start begins it).
    pub(super) fn hold_restored(
        &mut self,
        held: HashMap<u64, TaskKey>,
        agents: Vec<(u64, String)>,
        used_ms: Option<u64>,
        now: Instant,
    ) {
        let grace = self.config.reattach_grace;
        let earlier = Duration::from_millis(used_ms.unwrap_or(0));
        let charged = earlier + SAVE_EVERY.min(grace);
        self.record(Change::ReattachUsed { ms: Some(charged.as_millis() as u64) });
        let left = grace.saturating_sub(earlier);
        let hosts: Vec<&str> = agents.iter().map(|(_, h)| h.as_str()).collect();
        let begun = if used_ms.is_some() { " again, after an earlier start" } else { "" };
        info!(tasks = held.len(), agents = %hosts.join(", "), ?grace, used = ?earlier, release_in = ?left, "holding the restored tasks while the agents connected before the restart re-attach{begun}");
        let awaiting = agents.into_iter().collect();
        self.restart = Some(Restart {
            until: now + left,
            earlier,
            started: now,
            next_save: now + SAVE_EVERY,
            awaiting,
            held,
        });
    }

    /// An agent connected saying it replaces the agent process `id`, which has ended: that one
    /// is not waited for any longer, and a connection of it not yet noticed dead is given up
    /// (what it held runs again).
    pub(super) fn agent_replaced(&mut self, id: u64, host: &str) {
        let old = self.agents.iter().find(|(_, a)| a.id == id).map(|(&conn, _)| conn);
        if let Some(old) = old {
            self.agent_left(old, "a new process of this agent replaced it");
        }
        let awaited = self.restart.as_mut().and_then(|r| r.awaiting.remove(&id));
        if awaited.is_some() {
            self.record(Change::AgentGone { id });
            info!(%host, "a new process of an agent the restarted server waited for connected; the old one has ended and is not waited for");
        }
    }

    /// What the status shows of a hold, while there is one.
    pub(super) fn restart_status(&self) -> Option<RestartStatus> {
        let r = self.restart.as_ref()?;
        let mut awaiting: Vec<String> = r.awaiting.values().cloned().collect();
        awaiting.sort();
        let now = Instant::now();
        Some(RestartStatus {
            held: r.held.len() as u64,
            awaiting,
            release_in_ms: r.until.saturating_duration_since(now).as_millis() as u64,
            grace_used_ms: r.used(now).as_millis() as u64,
        })
    }

    /// When the hold needs the core next: the grace used is saved, or the held tasks are
    /// released whoever is missing.
    pub(super) fn next_release(&self) -> Option<Instant> {
        self.restart.as_ref().map(|r| r.until.min(r.next_save))
    }

    /// An agent re-attached with the tasks it holds from the previous run: those still held
    /// here are bound to it; it is told which, and drops the rest.
    pub(super) fn agent_reattached(&mut self, conn: ConnId, seqs: Vec<u64>) {
        let Some(agent) = self.agents.get(&conn) else { return };
        let (host, id) = (agent.host.clone(), agent.id);
        let mut kept = Vec::new();
        let now = Instant::now();
        if let Some(restart) = &mut self.restart {
            for seq in &seqs {
                let Some(key) = restart.held.remove(seq) else { continue };
                let Some(task) = self.tasks.get_mut(key) else { continue };
                let Some(agent) = self.agents.get_mut(&conn) else { break };
                task.agent = OptionalConn::some(conn);
                agent.running.insert(key, (task.kind, None));
                let request = self.kinds[task.kind.index()].request.as_ref();
                agent.usage.hold(&agent.resources, request.unwrap_or(&Request::PLAIN));
                kept.push((*seq, key));
                // It may have started long ago: held to its deadline from now.
                if let Some(timeout) = task.timeout_ms.get() {
                    let at = now + Duration::from_millis(timeout) + self.config.deadline_grace;
                    self.deadlines.push(Deadline { at, key, agent: conn });
                }
            }
            restart.awaiting.remove(&id);
        }
        let dropped = seqs.len() - kept.len();
        if self.restart.is_some() {
            info!(%conn, %host, kept = kept.len(), dropped, "agent re-attached after the restart; its tasks finish there");
        } else if !seqs.is_empty() {
            warn!(%conn, %host, dropped, "agent re-attached after the restored tasks were queued again; what it holds is dropped");
        }
        if let Some(agent) = self.agents.get(&conn) {
            let _ = agent.tx.send(ToAgent::Reattached(kept));
        }
        if self.restart.as_ref().is_some_and(|r| r.awaiting.is_empty()) {
            self.release_held("every agent re-attached");
        }
    }

    /// The grace for re-attaching is over, or what is used of it is saved.
    pub(super) fn on_release_timer(&mut self) {
        let now = Instant::now();
        let Some(restart) = &mut self.restart else { return };
        if now >= restart.until {
            self.release_held("the time for re-attaching is up");
        } else if now >= restart.next_save {
            restart.next_save = now + SAVE_EVERY;
            let used = restart.used(now).as_millis() as u64;
            self.record(Change::ReattachUsed { ms: Some(used) });
        }
    }

    /// Queues the held tasks nobody claimed again, each before what its driver submitted after
    /// it; agents still missing are forgotten.
    pub(super) fn release_held(&mut self, why: &str) {
        let Some(restart) = self.restart.take() else { return };
        self.record(Change::ReattachUsed { ms: None });
        let missing: Vec<String> = restart.awaiting.values().cloned().collect();
        for &id in restart.awaiting.keys() {
            self.record(Change::AgentGone { id });
        }
        let mut held: Vec<(u64, TaskKey)> = restart.held.into_iter().collect();
        // Newest first, each pushed to the front of its queue: oldest at the front in the end.
        held.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
        let mut queued = 0;
        let mut kinds = HashSet::new();
        for (_, key) in held {
            let Some(task) = self.tasks.get(key) else { continue };
            let (driver, kind) = (task.driver, task.kind);
            let Some(d) = self.drivers.get_mut(&driver) else { continue };
            d.queues.entry(kind).or_default().push_front(key);
            kinds.insert(kind);
            queued += 1;
        }
        if missing.is_empty() {
            info!(queued, %why, "restored tasks no agent held are queued again");
        } else {
            warn!(queued, %why, missing = %missing.join(", "), "restored tasks no agent held are queued again; these agents did not re-attach, and what they were running runs again");
        }
        // Those no connected agent can run wait, and say why.
        self.kinds_left(kinds.into_iter().collect(), Instant::now());
    }
}
