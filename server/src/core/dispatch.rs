//! Assigning queued tasks to agents with free credit, round-robin between drivers, and sending
//! every connection its batch of the turn (assignments and acknowledgements of results to
//! agents, results and acceptance counts to drivers).

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use blitzen_protocol::cluster::{Assignment, TaskKind, ToAgent, ToDriver};
use blitzen_protocol::ids::{ConnId, TaskKey};
use blitzen_protocol::priority::effective;
use blitzen_protocol::{Report, by_size};

use super::agents::{Agent, MAX_CREDIT};
use super::drivers::Driver;
use super::tasks::{OptionalConn, TaskTable};
use super::{Core, KindId};

/// What an agent does about a driver's queue (see [`Choice::oldest`]).
enum Pick {
    /// This task, taken off its queue.
    Taken(TaskKey),
    /// The oldest task does not fit yet: wait for it.
    Reserve(TaskKey),
    /// The oldest task does not fit, and another agent waits for it.
    Reserved,
    /// Nothing it can run.
    Nothing,
    /// The first task is of a kind the agent holds as many of as it may (see
    /// `Agent::capacity_for`): it stays first, and the agent takes nothing of this driver now.
    Full,
}

/// What choosing an agent's next task from a driver's queues looks at.
struct Choice<'a> {
    tasks: &'a TaskTable,
    kinds: &'a [TaskKind],
    bases: &'a [KindId],
    agent: &'a Agent,
    reservations: &'a HashMap<TaskKey, ConnId>,
    /// The agent's time left before its time limit (less [`DRAIN_MARGIN`]), when it has one,
    /// and how long each kind of task has taken (µs, by base kind; see `Core::kind_runs`).
    time_left: Option<(Duration, &'a HashMap<KindId, f64>)>,
}

/// What an agent with a time limit keeps free at its end: a task expected to end later than
/// this before the limit is not sent to it (its result must still come back).
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

impl Choice<'_> {
    /// What the agent should do about the driver's queues: take the first task among the kinds
    /// it can run (`fitting`: among those that fit now) — the oldest of the highest effective
    /// priority — if it fits, or wait for it.
    fn oldest(&self, d: &mut Driver, fitting: bool) -> Pick {
        let Choice { tasks, kinds, bases, agent: a, .. } = *self;
        // Tasks that ended while queued (a late result settled them) leave dead keys.
        for q in d.queues.values_mut() {
            while q.front().is_some_and(|&k| tasks.get(k).is_none()) {
                q.pop_front();
            }
        }
        // Whether a task of `class` fits now; `None`: it never could here.
        let runnable = |class: KindId| match &kinds[class.index()].request {
            None => Some(true),
            Some(r) if a.resources.shortfall(r).is_some() => None,
            Some(r) => Some(a.usage.fits(&a.resources, r)),
        };
        // With one priority among the queued (no priorities at all, mostly): the oldest first.
        // With several, the highest effective priority first (each queue rising while it
        // waits; see `blitzen_protocol::priority`), then the oldest.
        let priority = |class: &KindId| kinds[class.index()].priority;
        let (mut lowest, mut highest) = (i32::MAX, i32::MIN);
        for (class, _) in d.queues.iter().filter(|(_, q)| !q.is_empty()) {
            lowest = lowest.min(priority(class));
            highest = highest.max(priority(class));
        }
        let aging = lowest < highest;
        if aging {
            let queues = &d.queues;
            d.waiting_since.retain(|class, _| queues.get(class).is_some_and(|q| !q.is_empty()));
        } else {
            d.waiting_since.clear();
        }
        let now = Instant::now();
        let since = &mut d.waiting_since;
        let best = (d.queues.iter())
            .filter(|(class, _)| a.kinds.contains_key(&bases[class.index()]))
            .filter_map(|(&class, q)| {
                let key = *q.front()?;
                let fits = runnable(class)?;
                let task = tasks.get(key)?;
                if let Some((left, runs)) = self.time_left {
                    // By its timeout, else by how long its kind has taken; unknown: sent. Behind
                    // the tasks the agent holds, each counted as long as this one.
                    let expected =
                        (task.timeout_ms.get().map(Duration::from_millis)).or_else(|| {
                            runs.get(&bases[class.index()])
                                .map(|&us| Duration::from_micros(us as u64))
                        });
                    let rounds = (a.running.len() / a.workers.max(1) + 1) as u32;
                    if expected.is_some_and(|expected| expected.saturating_mul(rounds) > left) {
                        return None;
                    }
                }
                let seq = task.seq;
                let level = if aging {
                    let waited = now.saturating_duration_since(*since.entry(class).or_insert(now));
                    effective(priority(&class), waited, highest)
                } else {
                    0
                };
                (!fitting || fits).then_some((level, Reverse(seq), class, key, fits))
            })
            .max_by_key(|&(level, seq, ..)| (level, seq));
        match best {
            None => Pick::Nothing,
            Some((_, _, class, _, true))
                if a.running.len() >= a.capacity_for(bases[class.index()]) =>
            {
                Pick::Full
            }
            Some((_, _, class, _, true)) => {
                let taken = d.queues.get_mut(&class).and_then(VecDeque::pop_front);
                if aging {
                    d.waiting_since.insert(class, now);
                }
                taken.map_or(Pick::Nothing, Pick::Taken)
            }
            Some((_, _, _, key, false)) if self.reservations.contains_key(&key) => Pick::Reserved,
            Some((_, _, _, key, false)) => Pick::Reserve(key),
        }
    }
}

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
        let now = Instant::now();
        // Only agents with a time limit look at how long tasks take.
        let runs = if self.agents.values().any(|a| a.ends_at.is_some()) {
            self.kind_runs()
        } else {
            HashMap::new()
        };
        for conn in agent_ids {
            // `running` includes the tasks still in the outbox.
            while let Some(agent) = self.agents.get(&conn) {
                if agent.running.len() >= MAX_CREDIT.max(2 * agent.workers)
                    || agent.leaving.is_some()
                {
                    break;
                }
                let time_left = match agent.ends_at {
                    Some(at) => match at.checked_duration_since(now + DRAIN_MARGIN) {
                        Some(left) => Some((left, &runs)),
                        None => break,
                    },
                    None => None,
                };
                // How many it may hold depends on how long tasks of the next one's kind take
                // there: `next_task_for` gives none of a kind it holds enough of.
                let Some(key) = self.next_task_for(conn, time_left) else { break };
                // A task taking a large shared value this agent lacks waits for one that has it
                // and can take a task now (see `shares`); this agent takes nothing more now.
                if !self.shares.inputs.is_empty() && self.better_elsewhere(conn, key) {
                    self.requeue_front(key);
                    break;
                }
                // Shared values it takes go to the agent first, if it lacks them.
                let inputs =
                    if self.shares.inputs.is_empty() { None } else { self.shared_for(conn, key) };
                let Some(task) = self.tasks.get_mut(key) else { continue };
                let class = task.kind;
                let Some(agent) = self.agents.get_mut(&conn) else { break };
                // `next_task_for` only picks kinds the agent has.
                let Some(&kind) = agent.kinds.get(&self.bases[class.index()]) else { continue };
                task.agent = OptionalConn::some(conn);
                let free_worker = agent.running.len() < agent.workers;
                agent.running.insert(key, (class, free_worker.then_some(now)));
                let request = self.kinds[class.index()].request.as_ref();
                if let Some(request) = request {
                    agent.usage.hold(&agent.resources, request);
                } else {
                    agent.usage.cpus += 1;
                }
                let request = request.map(|r| Box::new(r.clone()));
                let stream = self.kinds[class.index()].stream;
                agent.outbox.push(Assignment {
                    key,
                    kind,
                    args: task.args.clone(),
                    timeout_ms: task.timeout_ms.get(),
                    retries: task.retries,
                    seq: durable.then_some(task.seq),
                    request,
                    stream,
                    inputs,
                });
            }
        }
    }

    /// The next task this agent gets: the one it is reserved for, once it fits; else the
    /// oldest queued task of the next driver (in rotation) among the kinds it can run — or,
    /// when that one does not fit yet and no other agent waits for it, none: the agent is
    /// reserved for it.
    fn next_task_for(
        &mut self,
        conn: ConnId,
        time_left: Option<(Duration, &HashMap<KindId, f64>)>,
    ) -> Option<TaskKey> {
        let mut agent = self.agents.get(&conn)?;
        if let Some(key) = agent.reserved_for {
            match self.tasks.get(key).filter(|t| t.agent.get().is_none()) {
                Some(task) if agent.running.len() >= agent.capacity_for(self.base(task.kind)) => {
                    return None;
                }
                Some(task) if agent.usage.fits(&agent.resources, self.request(task.kind)) => {
                    let (driver, class) = (task.driver, task.kind);
                    self.unreserve(conn, key);
                    let queue = self.drivers.get_mut(&driver)?.queues.get_mut(&class)?;
                    let at = queue.iter().position(|&k| k == key)?;
                    return queue.remove(at);
                }
                // It waits for this agent's running tasks to drain.
                Some(_) => return None,
                // It ended, or went to another agent.
                None => {
                    self.unreserve(conn, key);
                    agent = self.agents.get(&conn)?;
                }
            }
        }
        for _ in 0..self.rotation.len() {
            let driver = self.rotation.pop_front()?;
            self.rotation.push_back(driver);
            let Some(d) = self.drivers.get_mut(&driver) else { continue };
            let choice = Choice {
                tasks: &self.tasks,
                kinds: &self.kinds,
                bases: &self.bases,
                agent,
                reservations: &self.reservations,
                time_left,
            };
            match choice.oldest(d, false) {
                Pick::Taken(key) => return Some(key),
                Pick::Reserve(key) => {
                    self.reservations.insert(key, conn);
                    self.agents.get_mut(&conn)?.reserved_for = Some(key);
                    return None;
                }
                // The oldest waits for another agent: the oldest of what fits here now.
                Pick::Reserved => {
                    if let Pick::Taken(key) = choice.oldest(d, true) {
                        return Some(key);
                    }
                }
                Pick::Nothing | Pick::Full => {}
            }
        }
        None
    }

    /// How long each kind of task has taken (µs, by base kind): the longest of the agents'
    /// running averages.
    fn kind_runs(&self) -> HashMap<KindId, f64> {
        let mut runs: HashMap<KindId, f64> = HashMap::new();
        for (&kind, &us) in self.agents.values().flat_map(|a| a.averages.iter()) {
            let longest = runs.entry(kind).or_insert(us);
            *longest = longest.max(us);
        }
        runs
    }

    /// Ends `agent`'s reservation for `key`.
    fn unreserve(&mut self, agent: ConnId, key: TaskKey) {
        if self.reservations.get(&key) == Some(&agent) {
            self.reservations.remove(&key);
        }
        if let Some(a) = self.agents.get_mut(&agent) {
            a.reserved_for = None;
        }
    }

    /// Sends every connection its batch of this turn.
    /// When the oldest acknowledgement held back must go out.
    pub(super) fn next_ack_due(&self) -> Option<Instant> {
        self.agents.values().filter_map(|a| a.acks_since).min().map(|since| since + ACK_DELAY)
    }

    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        // Shared values before the assignments that take them.
        let sharing: Vec<ConnId> = (self.agents.iter())
            .filter(|(_, a)| !a.cache.outgoing.is_empty() || !a.cache.forget.is_empty())
            .map(|(&conn, _)| conn)
            .collect();
        for conn in sharing {
            let messages = self.share_messages(conn);
            if let Some(agent) = self.agents.get(&conn) {
                for message in messages {
                    let _ = agent.tx.send(message);
                }
            }
        }
        let on_disk_below = self.on_disk_below();
        for agent in self.agents.values_mut() {
            // On a data directory, a task goes out once it is saved; the others wait in the
            // outbox for the commit that saves them.
            let outbox = match on_disk_below {
                Some(below) if agent.outbox.iter().any(|a| a.seq.is_some_and(|s| s >= below)) => {
                    let (ready, held) = std::mem::take(&mut agent.outbox)
                        .into_iter()
                        .partition(|a| a.seq.is_none_or(|s| s < below));
                    agent.outbox = held;
                    ready
                }
                _ => std::mem::take(&mut agent.outbox),
            };
            // Acknowledgements ride with the next assignments (the same write, no extra wake-up
            // of the agent); alone, they wait up to `ACK_DELAY`, or until there are many.
            let due = outbox.len() + agent.acks.len() >= ACK_BATCH
                || !outbox.is_empty()
                || agent.acks_since.is_some_and(|since| now >= since + ACK_DELAY);
            if due && !agent.acks.is_empty() {
                let _ = agent.tx.send(ToAgent::Ack(std::mem::take(&mut agent.acks)));
                agent.acks_since = None;
            }
            // In messages of a bounded size: large arguments never make one past the frame limit.
            for batch in by_size(outbox, |a| a.args.len()) {
                let _ = agent.tx.send(ToAgent::Run(batch));
            }
            // A leaving agent hears that nothing follows once its last assignments are out.
            if let Some((_, released)) = &mut agent.leaving
                && !*released
                && agent.outbox.is_empty()
            {
                *released = true;
                let _ = agent.tx.send(ToAgent::Released);
            }
            // Cancels of tasks that were still waiting to go out, once they have.
            if !agent.held_cancels.is_empty() {
                let held = &agent.outbox;
                let (go, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut agent.held_cancels)
                    .into_iter()
                    .partition(|&k| !held.iter().any(|a| a.key == k));
                agent.held_cancels = wait;
                if !go.is_empty() {
                    let _ = agent.tx.send(ToAgent::Cancel(go));
                }
            }
        }
        let later_due = self.later_due.is_some_and(|at| now >= at);
        if later_due {
            self.later_due = None;
        }
        for d in self.drivers.values_mut() {
            if !d.later.is_empty() && (later_due || !d.outbox.is_empty()) {
                let mut now = std::mem::take(&mut d.later);
                now.append(&mut d.outbox);
                d.outbox = now;
            }
            // A task's lines go before its result.
            if !d.output.is_empty() {
                let output = std::mem::take(&mut d.output);
                if let Some(tx) = &d.tx {
                    let _ = tx.send(ToDriver::Output(output));
                }
            }
            if !d.outbox.is_empty() {
                let outbox = std::mem::take(&mut d.outbox);
                if let Some(tx) = &d.tx {
                    for batch in by_size(outbox, Report::payload_len) {
                        let _ = tx.send(ToDriver::Results(batch));
                    }
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
