//! Submissions: a driver's new tasks taken — queued, held for their inputs (see `graph`), or
//! refused with a report saying why.

use std::collections::HashMap;
use std::time::Instant;

use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::cluster::{Submission, TaskKind};
use blitzen_protocol::ids::{DriverTaskId, TaskKey};
use tracing::{debug, warn};

use super::tasks::{DriverKey, OptionalConn, Task};
use super::{Core, KindId};
use crate::store::{Change, TaskRecord};

impl Core {
    /// Queues a driver's new tasks; those beyond the task limit, or of a kind it never
    /// declared, are refused with a report. Tasks no connected agent can run wait (see
    /// `waiting`).
    pub(super) fn submit(
        &mut self,
        driver_key: DriverKey,
        kinds: Vec<TaskKind>,
        submissions: Vec<Submission>,
    ) {
        let new_kinds: Vec<KindId> = kinds.into_iter().map(|k| self.intern(k)).collect();
        if !new_kinds.is_empty() {
            self.tell_mismatches(driver_key, &new_kinds);
        }
        let Some(driver) = self.drivers.get_mut(&driver_key) else { return };
        driver.kinds.extend(new_kinds);
        driver.accepted += submissions.len() as u64;
        let name = driver.name.clone();
        let declared = driver.kinds.clone();
        let session = self.durable_session(driver_key);
        let mut unrunnable: HashMap<KindId, Vec<(DriverTaskId, TaskKey)>> = HashMap::new();
        // Whether a connected agent has each kind submitted, looked up once per kind.
        let mut runnable: HashMap<KindId, bool> = HashMap::new();
        let mut refused = Vec::new();
        let mut unsaved = Vec::new();
        let save_failure = self.save_failure().map(str::to_string);
        let mut undeclared = Vec::new();
        // Tasks that take a shared value the server does not hold: (task, value).
        let mut unshared = Vec::new();
        let count = submissions.len();
        let mut records = Vec::with_capacity(if session.is_some() { count } else { 0 });
        if let (Some(d), Some(last)) = (self.drivers.get_mut(&driver_key), submissions.last()) {
            d.next_id = d.next_id.max(last.id.get() + 1);
        }
        // Tasks waiting for others: held once the whole submission is in (they may wait on
        // tasks of the same submission).
        let mut waiting = Vec::new();
        for s in submissions {
            let Some(&kind) = declared.get(s.kind.get() as usize) else {
                undeclared.push(s.id);
                continue;
            };
            if self.tasks.len() >= self.config.task_limit {
                refused.push(s.id);
                continue;
            }
            if let Some(why) = s.inputs.as_ref().and_then(|i| self.cannot_share(driver_key, i)) {
                unshared.push((s.id, why));
                continue;
            }
            if save_failure.is_some() {
                unsaved.push(s.id);
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let timeout_ms =
                s.timeout_ms.or(self.config.default_timeout.map(|t| t.as_millis() as u64));
            let key = self.tasks.insert(Task {
                driver: driver_key,
                id: s.id,
                seq,
                kind,
                args: match &s.inputs {
                    // Every input in already: the driver filled them in.
                    Some(inputs) if inputs.is_ready() && !inputs.has_shared() => inputs.spliced(),
                    _ => s.args,
                },
                timeout_ms: timeout_ms.into(),
                retries: s.retries,
                // 1 ms at least (0 is "no limit"); at most 49 days.
                unrunnable_limit_ms: s
                    .unrunnable_limit_ms
                    .map_or(0, |ms| ms.clamp(1, u32::MAX.into()) as u32),
                agent: OptionalConn::NONE,
                attempts: 0,
            });
            let mut inputs = s.inputs;
            if let Some(inputs) = inputs.as_mut().filter(|i| i.has_shared()) {
                // Named by the server's keys from now on; held: checked above.
                let _ = self.take_shared(driver_key, key, inputs);
            }
            match inputs {
                // Its arguments are made on the agent, where the shared values are.
                Some(inputs) if inputs.is_ready() && inputs.has_shared() => {
                    self.shares.inputs.insert(key, inputs);
                }
                Some(inputs) if !inputs.is_ready() => {
                    if let Some(d) = self.drivers.get_mut(&driver_key) {
                        d.live += 1;
                    }
                    if session.is_some() {
                        let record = self.task_record(key);
                        let with = |(id, r)| (id, TaskRecord { inputs: Some(inputs.clone()), ..r });
                        records.extend(record.map(with));
                    }
                    waiting.push((key, inputs));
                    continue;
                }
                _ => {}
            }
            if let Some(d) = self.drivers.get_mut(&driver_key) {
                d.queues.entry(kind).or_default().push_back(key);
                d.live += 1;
            }
            if session.is_some() {
                records.extend(self.task_record(key));
            }
            let can_run = *runnable.entry(kind).or_insert_with(|| self.can_run(kind));
            if !can_run {
                unrunnable.entry(kind).or_default().push((s.id, key));
            }
        }
        if let Some(session) = session
            && !records.is_empty()
        {
            self.record(Change::Tasks { session, tasks: records });
        }
        for (key, inputs) in waiting {
            self.park(driver_key, key, *inputs);
        }
        debug!(%driver_key, driver = %name, count, refused = refused.len(), "tasks submitted");
        for (id, message) in unshared {
            self.report(driver_key, Report::unstarted(id, Outcome::BadArguments { message }), None);
        }
        if !undeclared.is_empty() {
            warn!(%driver_key, driver = %name, tasks = undeclared.len(), "submissions name a kind the driver never declared; refused");
            for id in undeclared {
                let reason = "the driver submitted it with a kind of task it never declared \
                              (a bug in the driver)"
                    .to_string();
                self.report(driver_key, Report::unstarted(id, Outcome::Refused { reason }), None);
            }
        }
        if let Some(error) = save_failure.filter(|_| !unsaved.is_empty()) {
            warn!(%driver_key, driver = %name, refused = unsaved.len(), %error, "the data directory takes no writes; submissions refused");
            let reason = format!(
                "the server cannot save to its data directory ({error}); submit again once it \
                 has space"
            );
            for id in unsaved {
                let outcome = Outcome::Refused { reason: reason.clone() };
                self.report(driver_key, Report::unstarted(id, outcome), None);
            }
        }
        if !refused.is_empty() {
            warn!(%driver_key, driver = %name, refused = refused.len(), limit = self.config.task_limit, "task limit reached; submissions refused");
            let reason = format!(
                "the server already holds its limit of {} tasks (--task-limit); submit again \
                 once earlier tasks have finished",
                self.config.task_limit
            );
            for id in refused {
                let outcome = Outcome::Refused { reason: reason.clone() };
                self.report(driver_key, Report::unstarted(id, outcome), None);
            }
        }
        let now = Instant::now();
        for (kind, tasks) in unrunnable {
            self.queued_unrunnable(driver_key, kind, &tasks, now);
        }
        // The driver hears them accepted once they are saved (at once without a data directory).
        self.record_session(driver_key);
        let batch = self.current_batch();
        let durable = self.durable.is_some();
        if let Some(d) = self.drivers.get_mut(&driver_key) {
            if durable {
                d.accepted_at.push_back((batch, d.accepted));
            } else {
                d.durable_accepted = d.accepted;
                d.accepted_told = false;
            }
        }
    }
}
