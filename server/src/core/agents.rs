//! Agents: joining and leaving, their results (each task's first result wins), and the
//! deadlines of started tasks whose agent stays silent about them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use blitzen_protocol::Report;
use blitzen_protocol::cluster::{Assignment, TaskKind, ToAgent, WorkerReport};
use blitzen_protocol::ids::{ConnId, KindIndex, TaskKey};
use blitzen_protocol::{Capacity, Outcome, Usage, WorkerInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use blitzen_protocol::status::{RunningTask, WorkerState};

use super::counters::Outcomes;
use super::tasks::OptionalConn;
use super::{Core, KindId};
use crate::store::Change;

/// Expected work per worker an agent may hold beyond its first two tasks per worker.
const WORK_WINDOW: Duration = Duration::from_millis(5);

/// Most tasks an agent may hold at once.
pub(super) const MAX_CREDIT: usize = 1024;

/// What an agent announced in its hello.
#[derive(Debug)]
pub(crate) struct JoiningAgent {
    /// Its name for logs and task errors.
    pub host: String,
    /// Worker processes it runs.
    pub workers: u32,
    /// The tasks compiled into it, in the order of its announcement.
    pub kinds: Vec<TaskKind>,
    /// The agent process (0: none); see [`Agent::id`].
    pub id: u64,
    /// The agent process it replaces, which has ended (0: none).
    pub replaces: u64,
    /// What its running tasks may hold at once, as it said; `None`: one CPU per worker.
    pub capacity: Option<Capacity>,
    /// The size of its cache of shared values, as it said (0: the default).
    pub cache_size: u64,
    /// How long until it stops by itself (its time limit), as it said.
    pub ends_in: Option<Duration>,
    /// The allocation it runs in (a Slurm job id), as it said; empty: none.
    pub allocation: String,
}

/// A connected agent.
#[derive(Debug)]
pub(super) struct Agent {
    /// Its name for logs and task errors.
    pub host: String,
    /// The kinds it can run, each with its index in the agent's own announcement (what an
    /// assignment names it by).
    pub kinds: HashMap<KindId, KindIndex>,
    /// Worker processes it runs (at least 1).
    pub workers: usize,
    /// Running average of its tasks' run times (µs), once some have finished; widens its
    /// credit for short tasks.
    pub average_us: Option<f64>,
    /// The running average run time of each kind of task it ran (by base kind), in µs: what
    /// decides how many of a kind it may hold ([`Agent::capacity_for`]).
    pub averages: HashMap<KindId, f64>,
    /// Tasks assigned to it and not finished, those still in `outbox` included, each with its
    /// kind (whose request it holds in `usage`) and, for one sent while the agent had a worker
    /// free for it, when it was sent (its result then shows the round trip; one that waited
    /// for a worker there shows its wait too): every one has its `Task::agent` set to this
    /// agent. Its size is what [`Agent::capacity`] limits.
    pub running: HashMap<TaskKey, (KindId, Option<Instant>)>,
    /// The round trip to it, in µs, as its results show it: the time from sending a task that
    /// found a worker free to its result, less the task's run time, at its lowest lately.
    /// Widens its credit, so that a distant agent's workers do not idle. (Tasks that waited for
    /// a worker there are no sample: their wait grows with the credit, which would grow the
    /// estimate, and so the credit, without end.)
    pub round_trip_us: Option<f64>,
    /// What its tasks may hold at once.
    pub resources: Capacity,
    /// What the tasks in `running` hold (a plain one, one CPU: with prefetching, plain tasks
    /// may hold more CPUs here than it has; a task with a request fits only in what is left).
    pub usage: Usage,
    /// The oldest task it could run that did not fit: it gets nothing else until that one does.
    pub reserved_for: Option<TaskKey>,
    /// What its running tasks held when it last reported them, for observers.
    pub used: Capacity,
    /// Its connection's writer.
    pub tx: mpsc::UnboundedSender<ToAgent>,
    /// Cancelled to close its connection when it breaks the protocol.
    pub close: CancellationToken,
    /// Assignments to send at the end of this turn.
    pub outbox: Vec<Assignment>,
    /// Tasks to cancel whose assignments are still in `outbox` (waiting to be saved): the
    /// cancel follows them out.
    pub held_cancels: Vec<TaskKey>,
    /// Results taken and not acknowledged yet (the agent keeps each until then); sent with the
    /// next assignments, or on their own after a short delay (see `dispatch`).
    pub acks: Vec<TaskKey>,
    /// When the oldest of `acks` was taken.
    pub acks_since: Option<Instant>,
    /// Results taken whose batch is not saved in the data directory yet: `(batch, key)`;
    /// acknowledged once it is.
    pub unsaved: Vec<(u64, TaskKey)>,
    /// The agent process, the same on all its connections (0: none given): a new connection
    /// with the id of this one means this one is dead.
    pub id: u64,
    /// How its tasks ended, for observers.
    pub outcomes: Outcomes,
    /// When it connected.
    pub connected_at: Instant,
    /// When something last arrived from it (a result, a report, a heartbeat).
    pub last_heard: Instant,
    /// What its workers ran when it last said ([`FromAgent::Workers`]), resolved to sessions
    /// and names as it arrived (a short task has ended by the time anyone looks).
    ///
    /// [`FromAgent::Workers`]: blitzen_protocol::cluster::FromAgent::Workers
    pub reported: Vec<WorkerState>,
    /// The shared values it keeps for its tasks.
    pub cache: super::shares::AgentCache,
    /// When it stops by itself (its time limit): it gets no task expected to outlast that.
    pub ends_at: Option<Instant>,
    /// The allocation it runs in (a Slurm job id); empty: none.
    pub allocation: String,
    /// Leaving: why, and whether it has been told that no task follows
    /// ([`ToAgent::Released`]). It gets nothing more.
    pub leaving: Option<(String, bool)>,
}

impl Agent {
    /// Tasks it may hold at once: two per worker, and, once its tasks have shown how long they
    /// take, what keeps each worker busy for `WORK_WINDOW` plus a round trip to it.
    pub(super) fn capacity(&self) -> usize {
        self.capacity_with(self.average_us)
    }

    /// [`capacity`](Self::capacity) when the next task is of `kind` (a base kind): by how long
    /// tasks of that kind took here, not tasks of every kind — a kind of 10 ms tasks after
    /// millions of no-ops is not prefetched a thousand deep (nor held behind by a task of a
    /// higher priority).
    pub(super) fn capacity_for(&self, kind: KindId) -> usize {
        self.capacity_with(self.averages.get(&kind).copied())
    }

    fn capacity_with(&self, average_us: Option<f64>) -> usize {
        let base = 2 * self.workers;
        let extra = match average_us {
            Some(avg) => {
                let per_worker = WORK_WINDOW.as_micros() as f64 + self.round_trip_us.unwrap_or(0.0);
                ((self.workers as f64) * per_worker / avg.max(1.0)) as usize
            }
            None => 0,
        };
        (base + extra).min(MAX_CREDIT.max(base))
    }

    /// Learns the round trip from a result that took `total_us` from sending to arriving, of a
    /// task that ran `run_us`: the lowest sample is taken at once, higher ones only slowly.
    pub(super) fn learn_round_trip(&mut self, total_us: f64, run_us: f64) {
        let sample = (total_us - run_us).max(0.0);
        self.round_trip_us = Some(match self.round_trip_us {
            Some(rtt) if sample >= rtt => 0.99 * rtt + 0.01 * sample,
            _ => sample,
        });
    }
}

/// Names for a log line: the first 20, then how many more.
fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 20;
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    let more = match names.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!(" and {more} more"),
        _ => String::new(),
    };
    names.truncate(SHOWN);
    format!("{}{more}", names.join(", "))
}

impl Core {
    pub(super) fn agent_joined(
        &mut self,
        conn: ConnId,
        joining: JoiningAgent,
        tx: mpsc::UnboundedSender<ToAgent>,
        close: CancellationToken,
    ) {
        if joining.replaces != 0 {
            self.agent_replaced(joining.replaces, &joining.host);
        }
        if joining.id != 0
            && let Some(&old) =
                (self.agents.iter()).find(|(_, a)| a.id == joining.id).map(|(conn, _)| conn)
        {
            // Its previous connection is dead but not noticed yet: what it held is given up
            // like a lost agent's, so results the agent now recovers are expected.
            self.agent_left(old, "the agent reconnected on a new connection");
        }
        let names = name_list(joining.kinds.iter().map(|k| k.name.as_str()));
        let joined: Vec<String> = joining.kinds.iter().map(|k| k.name.clone()).collect();
        let kinds: HashMap<KindId, KindIndex> = (joining.kinds.into_iter().enumerate())
            .map(|(i, k)| (self.intern(k), KindIndex::new(i as u32)))
            .collect();
        let workers = (joining.workers as usize).max(1);
        let resources =
            (joining.capacity).unwrap_or_else(|| Capacity::new(workers as u32, u64::MAX));
        let host = joining.host;
        let allocation = joining.allocation;
        if self.config.autoscale.is_some() && !allocation.is_empty() {
            self.joined_allocations.push(allocation.clone());
        }
        match joining.ends_in {
            Some(ends_in) => info!(
                %conn, %host, workers, %resources, tasks = %names, %allocation,
                ends_in = %format_args!("{:.1}s", ends_in.as_secs_f64()),
                "agent connected"
            ),
            None => {
                info!(%conn, %host, workers, %resources, tasks = %names, %allocation, "agent connected")
            }
        }
        if joining.id != 0 && self.durable.is_some() {
            self.record(Change::Agent { id: joining.id, host: host.clone() });
        }
        let agent = Agent {
            host: host.clone(),
            kinds,
            workers,
            average_us: None,
            averages: HashMap::new(),
            running: HashMap::new(),
            round_trip_us: None,
            usage: Usage::new(&resources),
            used: Capacity { cpus: 0, memory: 0, custom: Vec::new() },
            resources,
            reserved_for: None,
            tx,
            close,
            outbox: Vec::new(),
            held_cancels: Vec::new(),
            acks: Vec::new(),
            acks_since: None,
            unsaved: Vec::new(),
            id: joining.id,
            cache: super::shares::AgentCache::new(joining.cache_size),
            outcomes: Outcomes::default(),
            connected_at: Instant::now(),
            last_heard: Instant::now(),
            reported: Vec::new(),
            // A limit past what a clock can hold (an agent may say anything) is none.
            ends_at: joining.ends_in.and_then(|d| Instant::now().checked_add(d)),
            allocation,
            leaving: None,
        };
        self.agents.insert(conn, agent);
        self.kinds_runnable(&host);
        self.tell_mismatches_after_join(&joined.iter().map(String::as_str).collect::<Vec<_>>());
        if self.restart.as_ref().is_some_and(|r| r.awaiting.is_empty()) {
            self.release_held(
                "every agent connected before the restart re-attached or was replaced",
            );
        }
    }

    /// Results from an agent. Each task's first result is kept; a later one (the task ran
    /// twice because its first agent vanished and came back) is dropped and logged. A result on
    /// this connection for a task the agent does not hold, or a recovered one for a task no agent
    /// ever lost, breaks the protocol: the connection is closed and the rest of the batch
    /// ignored.
    pub(super) fn agent_done(
        &mut self,
        conn: ConnId,
        results: Vec<Report<TaskKey>>,
        recovered: bool,
    ) {
        let Some(agent) = self.agents.get_mut(&conn) else { return };
        let now = Instant::now();
        agent.last_heard = now;
        let host = agent.host.clone();
        let mut duplicates = 0;
        for r in results {
            let (durable, batch) = (self.durable.is_some(), self.current_batch());
            if let Some(agent) = self.agents.get_mut(&conn) {
                if durable {
                    agent.unsaved.push((batch, r.id));
                } else {
                    agent.acks.push(r.id);
                    agent.acks_since.get_or_insert_with(Instant::now);
                }
            }
            if !recovered {
                let Some(agent) = self.agents.get_mut(&conn) else { return };
                let Some((kind, sent)) = agent.running.remove(&r.id) else {
                    warn!(%conn, %host, key = %r.id, "agent sent a result for a task it does not hold; connection closed");
                    agent.close.cancel();
                    break;
                };
                let Some(agent) = self.agents.get_mut(&conn) else { return };
                match &self.kinds[kind.index()].request {
                    Some(request) => agent.usage.release(&agent.resources, request),
                    None => agent.usage.cpus = agent.usage.cpus.saturating_sub(1),
                }
                let us = r.run.elapsed_us as f64;
                agent.average_us = Some(agent.average_us.map_or(us, |avg| 0.9 * avg + 0.1 * us));
                let average = agent.averages.entry(self.bases[kind.index()]).or_insert(us);
                *average = 0.9 * *average + 0.1 * us;
                if let Some(sent) = sent {
                    let total = now.saturating_duration_since(sent).as_micros() as f64;
                    agent.learn_round_trip(total, us);
                }
            } else if self.tasks.get(r.id).is_some_and(|t| t.attempts == 0) {
                // Only a task some agent lost can come back late; this one never was.
                warn!(%conn, %host, key = %r.id, "agent recovered a result for a task no agent lost; connection closed");
                if let Some(agent) = self.agents.get(&conn) {
                    agent.close.cancel();
                }
                break;
            }
            let mut run = r.run;
            self.add_unstreamed(r.id, &mut run);
            let Some(task) = self.take_task(r.id) else {
                duplicates += 1;
                continue;
            };
            debug!(task = %task.id, driver = %task.driver, agent = %conn, recovered, "task finished");
            let worker = r.worker.map(|w| WorkerInfo { host: Some(host.clone()), ..w });
            if let Some(agent) = self.agents.get_mut(&conn) {
                agent.outcomes.count(&run.outcome);
            }
            self.report(task.driver, Report { id: task.id, worker, run }, Some(task.kind));
        }
        if duplicates > 0 {
            info!(%conn, %host, duplicates, recovered, "results for tasks that had already ended (they ran twice); dropped");
        }
    }

    /// An agent said what its workers run now.
    pub(super) fn agent_workers(&mut self, conn: ConnId, workers: Vec<WorkerReport>) {
        let Some(agent) = self.agents.get(&conn) else { return };
        let mut used = Usage::new(&agent.resources);
        for (key, _) in workers.iter().filter_map(|w| w.running) {
            if let Some(task) = self.tasks.get(key) {
                used.hold(&agent.resources, self.request(task.kind));
            }
        }
        let used = Capacity {
            cpus: used.cpus,
            memory: used.memory,
            custom: (agent.resources.custom.iter().zip(used.custom))
                .map(|((name, _), n)| (name.clone(), n))
                .collect(),
        };
        let states = (workers.into_iter())
            .map(|w| WorkerState {
                pid: w.pid,
                task: w.running.and_then(|(key, for_ms)| {
                    let task = self.tasks.get(key)?;
                    let session = self.drivers.get(&task.driver)?.session.clone();
                    let name = self.kind(task.kind).shown().to_string();
                    Some(RunningTask { session, id: task.id.get(), task: name, for_ms })
                }),
            })
            .collect();
        if let Some(agent) = self.agents.get_mut(&conn) {
            let now = Instant::now();
            agent.last_heard = now;
            agent.reported = states;
            agent.used = used;
        }
    }

    /// An agent takes no more tasks: it is told so once the tasks already given to it have
    /// gone out (see `flush`), and leaves when they are done.
    pub(super) fn agent_leaving(&mut self, conn: ConnId, reason: String) {
        let Some(agent) = self.agents.get_mut(&conn) else { return };
        info!(%conn, host = %agent.host, allocation = %agent.allocation, held = agent.running.len(), %reason, "agent leaving: it takes no more tasks");
        agent.leaving = Some((reason, false));
        if let Some(key) = agent.reserved_for.take()
            && self.reservations.get(&key) == Some(&conn)
        {
            self.reservations.remove(&key);
        }
    }

    /// An agent is gone: the tasks it held go back to their queues where they were, or end
    /// `Lost` once handed out `max_attempts` times.
    pub(super) fn agent_left(&mut self, conn: ConnId, reason: &str) {
        let Some(agent) = self.agents.remove(&conn) else { return };
        match &agent.leaving {
            // It said it was leaving: a departure, not a loss.
            Some((why, _)) => {
                info!(%conn, host = %agent.host, allocation = %agent.allocation, handed_back = agent.running.len(), reason = %why, "agent left")
            }
            None => {
                warn!(%conn, host = %agent.host, running = agent.running.len(), %reason, "agent disconnected")
            }
        }
        if let Some(key) = agent.reserved_for
            && self.reservations.get(&key) == Some(&conn)
        {
            self.reservations.remove(&key);
        }
        if agent.id != 0 && self.durable.is_some() {
            self.record(Change::AgentGone { id: agent.id });
        }
        let mut lost = Vec::new();
        for key in agent.running.into_keys() {
            if self.cancelling.contains(&key) {
                // Cancelled: it ends here rather than running again elsewhere.
                if let Some(task) = self.take_task(key) {
                    let reason = "cancelled; its agent disconnected before it answered".into();
                    let report = Report::unstarted(task.id, Outcome::Cancelled { reason });
                    self.report(task.driver, report, Some(task.kind));
                }
                continue;
            }
            let Some(task) = self.tasks.get_mut(key) else { continue };
            task.agent = OptionalConn::NONE;
            task.attempts += 1;
            if task.attempts >= self.config.max_attempts {
                lost.push(key);
                continue;
            }
            self.record_attempts(key);
            let Some(task) = self.tasks.get(key) else { continue };
            let (driver, kind, seq) = (task.driver, task.kind, task.seq);
            if let Some(d) = self.drivers.get_mut(&driver) {
                // Back where it was in its queue: before what was submitted after it.
                let queue = d.queues.entry(kind).or_default();
                let tasks = &self.tasks;
                let at = queue.partition_point(|&k| tasks.get(k).is_some_and(|t| t.seq < seq));
                queue.insert(at, key);
            }
        }
        for key in lost {
            if let Some(task) = self.take_task(key) {
                let reason = format!(
                    "its agent disconnected {} times while holding it; giving up",
                    task.attempts
                );
                let report = Report::unstarted(task.id, Outcome::Lost { reason });
                self.report(task.driver, report, Some(task.kind));
            }
        }
        self.kinds_left(agent.kinds.into_keys().collect(), Instant::now());
    }
}
