//! Agents re-attaching after a restart on the data directory.
//!
//! A restarted server does not know which of its restored tasks were running when it stopped:
//! the agents do. So it holds the restored tasks back from dispatch ([`Restart`]) while the
//! agents that were connected (saved in the data directory) come back. Each sends the numbers
//! (`seq`) of the tasks it still holds from the previous run; those the server still holds are
//! bound to it under new keys ([`ToAgent::Reattached`]) and finish there once — they are not
//! started again. When every such agent is back, or `reattach_grace` has passed, the tasks
//! nobody claimed are queued again, before everything submitted since.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use blitzen_protocol::Request;
use blitzen_protocol::cluster::ToAgent;
use blitzen_protocol::ids::{ConnId, TaskKey};
use tracing::{info, warn};

use super::Core;
use super::agents::Deadline;
use super::tasks::OptionalConn;
use crate::store::Change;

/// The restored tasks held back while the agents of the previous run re-attach.
#[derive(Debug)]
pub(super) struct Restart {
    /// When the tasks nobody claimed are queued again, whoever is missing.
    pub until: Instant,
    /// Agents connected when the server stopped and not back yet: id → host.
    pub awaiting: HashMap<u64, String>,
    /// The restored tasks not claimed yet, by `seq`.
    pub held: HashMap<u64, TaskKey>,
}

impl Core {
    /// When the held tasks are released whoever is missing.
    pub(super) fn next_release(&self) -> Option<Instant> {
        self.restart.as_ref().map(|r| r.until)
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
                agent.running.insert(key, (task.kind, now));
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

    /// The grace for re-attaching is over.
    pub(super) fn on_release_timer(&mut self) {
        if self.restart.as_ref().is_some_and(|r| Instant::now() >= r.until) {
            self.release_held("the time for re-attaching is up");
        }
    }

    /// Queues the held tasks nobody claimed again, each before what its driver submitted after
    /// it; agents still missing are forgotten.
    pub(super) fn release_held(&mut self, why: &str) {
        let Some(restart) = self.restart.take() else { return };
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
