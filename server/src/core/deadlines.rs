//! Deadlines of started tasks: a task with a timeout that its agent, though alive, does not
//! answer for by its timeout plus `deadline_grace` (counted from its start) is settled by the
//! server (`Lost`). The agent enforces timeouts itself; this is the backstop.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::ids::{ConnId, TaskKey};
use tracing::{debug, warn};

use super::Core;

/// When a started task is settled if `agent` has not answered for it by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deadline {
    /// The task's timeout plus the grace period, from its start.
    pub at: Instant,
    /// The task.
    pub key: TaskKey,
    /// The agent it started on; if the task has moved since, the deadline is stale.
    pub agent: ConnId,
}

impl Ord for Deadline {
    /// Earliest first in a `BinaryHeap` (a max-heap), ties broken by key and agent.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.key, other.agent).cmp(&(self.at, self.key, self.agent))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Core {
    /// Holds started tasks to their timeout plus the grace period.
    pub(super) fn agent_started(&mut self, conn: ConnId, keys: Vec<TaskKey>) {
        let Some(agent) = self.agents.get(&conn) else { return };
        debug!(%conn, count = keys.len(), "tasks with a timeout started");
        let now = Instant::now();
        for key in keys {
            if !agent.running.contains_key(&key) {
                continue;
            }
            let Some(timeout) = self.tasks.get(key).and_then(|t| t.timeout_ms.get()) else {
                continue;
            };
            let at = now + Duration::from_millis(timeout) + self.config.deadline_grace;
            self.deadlines.push(Deadline { at, key, agent: conn });
        }
    }

    /// Settles started tasks whose agent has not answered by their deadline.
    pub(super) fn settle_overdue(&mut self) {
        let now = Instant::now();
        while let Some(&Deadline { at, key, agent: conn }) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let still_there = self.tasks.get(key).is_some_and(|t| t.agent.get() == Some(conn));
            let Some(agent) = self.agents.get(&conn) else { continue };
            if !still_there || !agent.running.contains_key(&key) {
                continue;
            }
            let host = agent.host.clone();
            let Some(task) = self.take_task(key) else { continue };
            let timeout = Duration::from_millis(task.timeout_ms.get().unwrap_or_default());
            let grace = self.config.deadline_grace;
            warn!(%conn, %host, task = %task.id, ?timeout, ?grace, "no answer by the task's deadline; settled by the server");
            let reason = format!(
                "its agent {host} did not answer within the task's timeout ({timeout:?}) plus a \
                 grace of {grace:?}; settled by the server"
            );
            let report = Report::unstarted(task.id, Outcome::Lost { reason });
            self.report(task.driver, report, Some(task.kind));
        }
    }
}
