//! Assigning queued tasks to agents with free credit, round-robin between drivers, and sending
//! every connection its batch of the turn (assignments and acknowledgements of results to
//! agents, results and acceptance counts to drivers).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use blitzen_protocol::cluster::{Assignment, ToAgent, ToDriver};
use blitzen_protocol::ids::{ConnId, TaskKey};

use super::Core;
use super::tasks::OptionalConn;

/// Longest an acknowledgement of results waits for assignments to ride with.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Acknowledgements (with assignments) sent at once, however recent.
const ACK_BATCH: usize = 256;

impl Core {
    /// Fills every agent's free credit, round-robin between drivers.
    pub(super) fn dispatch(&mut self) {
        let agent_ids: Vec<ConnId> = self.agents.keys().copied().collect();
        // With a data directory each task carries its number, for re-attaching after a restart.
        let durable = self.durable.is_some();
        for conn in agent_ids {
            // `running` includes the tasks still in the outbox.
            while let Some(agent) = self.agents.get(&conn) {
                if agent.running.len() >= agent.capacity() {
                    break;
                }
                let Some(key) = self.next_task_for(conn) else { break };
                let Some(task) = self.tasks.get_mut(key) else { continue };
                let Some(agent) = self.agents.get_mut(&conn) else { break };
                // `next_task_for` only picks kinds the agent has.
                let Some(&kind) = agent.kinds.get(&task.kind) else { continue };
                task.agent = OptionalConn::some(conn);
                agent.running.insert(key);
                agent.outbox.push(Assignment {
                    key,
                    kind,
                    args: task.args.clone(),
                    timeout_ms: task.timeout_ms.get(),
                    retries: task.retries,
                    seq: durable.then_some(task.seq),
                });
            }
        }
    }

    /// The oldest queued task of the next driver (in rotation) that this agent can run.
    fn next_task_for(&mut self, agent: ConnId) -> Option<TaskKey> {
        let kinds = &self.agents.get(&agent)?.kinds;
        let tasks = &self.tasks;
        for _ in 0..self.rotation.len() {
            let conn = self.rotation.pop_front()?;
            self.rotation.push_back(conn);
            let Some(d) = self.drivers.get_mut(&conn) else { continue };
            // Tasks that ended while queued (a late result settled them) leave dead keys.
            for q in d.queues.values_mut() {
                while q.front().is_some_and(|&k| tasks.get(k).is_none()) {
                    q.pop_front();
                }
            }
            // The oldest task among the kinds this agent can run.
            let best = d
                .queues
                .iter()
                .filter(|(k, _)| kinds.contains_key(k))
                .filter_map(|(&k, q)| Some((k, tasks.get(*q.front()?)?.seq)))
                .min_by_key(|&(_, seq)| seq)
                .map(|(k, _)| k);
            if let Some(kind) = best {
                return d.queues.get_mut(&kind).and_then(VecDeque::pop_front);
            }
        }
        None
    }

    /// Sends every connection its batch of this turn.
    /// When the oldest acknowledgement held back must go out.
    pub(super) fn next_ack_due(&self) -> Option<Instant> {
        self.agents.values().filter_map(|a| a.acks_since).min().map(|since| since + ACK_DELAY)
    }

    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        for agent in self.agents.values_mut() {
            // Acknowledgements ride with the next assignments (the same write, no extra wake-up
            // of the agent); alone, they wait up to `ACK_DELAY`, or until there are many.
            let due = agent.outbox.len() + agent.acks.len() >= ACK_BATCH
                || !agent.outbox.is_empty()
                || agent.acks_since.is_some_and(|since| now >= since + ACK_DELAY);
            if due && !agent.acks.is_empty() {
                let _ = agent.tx.send(ToAgent::Ack(std::mem::take(&mut agent.acks)));
                agent.acks_since = None;
            }
            if !agent.outbox.is_empty() {
                let _ = agent.tx.send(ToAgent::Run(std::mem::take(&mut agent.outbox)));
            }
        }
        for d in self.drivers.values_mut() {
            if !d.outbox.is_empty() {
                let batch = std::mem::take(&mut d.outbox);
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Results(batch));
                }
            }
            // After the results: a driver that hears its tasks were taken already holds the
            // answers of those that were refused.
            if !d.accepted_told {
                d.accepted_told = true;
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Accepted { count: d.durable_accepted });
                }
            }
        }
    }
}
