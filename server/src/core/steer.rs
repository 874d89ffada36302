//! Steering: cancelling tasks (a driver its own, an observer any session's), and answering an
//! observer's requests.
//!
//! A cancel follows the exactly-once path of every other ending: a queued task ends here with
//! `Cancelled` (saved like any result on a durable server); a task an agent holds is cancelled
//! by that agent, whose answer — `Cancelled`, or the value of a task that finished first — is
//! its one result. Should the agent vanish before answering, the task ends `Cancelled` rather
//! than running again.

use std::collections::{HashMap, HashSet};

use blitzen_protocol::Outcome;
use blitzen_protocol::Report;
use blitzen_protocol::cluster::{FromObserver, ToAgent, ToObserver};
use blitzen_protocol::ids::{ConnId, DriverTaskId, TaskKey};
use blitzen_protocol::status::CancelReport;
use tokio::sync::oneshot;
use tracing::info;

use super::Core;
use super::tasks::DriverKey;

impl Core {
    /// Cancels tasks of `driver`: those of `ids`, or every one it has unfinished (`None`).
    pub(super) fn cancel(
        &mut self,
        driver: DriverKey,
        ids: Option<Vec<DriverTaskId>>,
    ) -> CancelReport {
        let wanted: Option<HashSet<DriverTaskId>> =
            ids.as_ref().map(|ids| ids.iter().copied().collect());
        let asked = wanted.as_ref().map_or(0, HashSet::len) as u64;
        let keys: Vec<TaskKey> = (self.tasks.keys())
            .filter(|(_, t)| t.driver == driver)
            .filter(|(_, t)| wanted.as_ref().is_none_or(|w| w.contains(&t.id)))
            .map(|(key, _)| key)
            .collect();
        let mut report = CancelReport::default();
        let mut by_agent: HashMap<ConnId, Vec<TaskKey>> = HashMap::new();
        for key in keys {
            let Some(task) = self.tasks.get(key) else { continue };
            match task.agent.get() {
                Some(agent) => {
                    if self.cancelling.insert(key) {
                        by_agent.entry(agent).or_default().push(key);
                    }
                    report.running += 1;
                }
                None => {
                    // Its key stays in its queue and is skipped there.
                    let Some(task) = self.take_task(key) else { continue };
                    let reason = "cancelled before it started".to_string();
                    let cancelled = Report::unstarted(task.id, Outcome::Cancelled { reason });
                    // With the tasks that wait on it, which will not run either.
                    let mut ended = vec![(task.driver, cancelled, Some(task.kind))];
                    while let Some((driver, cancelled, kind)) = ended.pop() {
                        self.inputs_ended(driver, &cancelled, kind, &mut ended);
                        // Saved with the task's end; its driver hears it once that is on
                        // disk, so a restart cannot bring back a task whose cancel was
                        // reported.
                        self.record_result(driver, &cancelled);
                        match (self.durable.is_some(), kind) {
                            (true, Some(kind)) => {
                                let batch = self.current_batch();
                                self.unsaved_cancels.push((batch, driver, cancelled, kind));
                            }
                            _ => self.deliver(driver, cancelled, kind),
                        }
                    }
                    report.queued += 1;
                }
            }
        }
        for (agent, keys) in by_agent {
            if let Some(a) = self.agents.get_mut(&agent) {
                // After its assignment: a task still waiting to be saved before it goes out is
                // cancelled once it has gone (see `flush`).
                let (held, now): (Vec<_>, Vec<_>) =
                    keys.into_iter().partition(|&k| a.outbox.iter().any(|x| x.key == k));
                a.held_cancels.extend(held);
                if !now.is_empty() {
                    let _ = a.tx.send(ToAgent::Cancel(now));
                }
            }
        }
        report.not_found = asked.saturating_sub(report.queued + report.running);
        let name = self.drivers.get(&driver).map(|d| d.name.as_str()).unwrap_or_default();
        info!(%driver, %name, queued = report.queued, running = report.running, not_found = report.not_found, "tasks cancelled");
        report
    }

    /// Answers an observer; the answer to a cancel on a durable server once it is saved.
    pub(super) fn on_observe(&mut self, request: FromObserver, reply: oneshot::Sender<ToObserver>) {
        let cancel = matches!(request, FromObserver::Cancel { .. });
        let answer = self.observe(request);
        if cancel && self.durable.is_some() {
            let batch = self.current_batch();
            self.unsaved_replies.push((batch, reply, answer));
        } else {
            let _ = reply.send(answer);
        }
    }

    /// What waited for batch `batch` to be saved goes out: cancels and their answers.
    pub(super) fn cancels_saved(&mut self, batch: u64) {
        let (saved, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unsaved_cancels).into_iter().partition(|c| c.0 <= batch);
        self.unsaved_cancels = waiting;
        for (_, driver, report, kind) in saved {
            self.deliver(driver, report, Some(kind));
        }
        let (saved, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unsaved_replies).into_iter().partition(|r| r.0 <= batch);
        self.unsaved_replies = waiting;
        for (_, reply, answer) in saved {
            let _ = reply.send(answer);
        }
    }

    /// Answers an observer.
    pub(super) fn observe(&mut self, request: FromObserver) -> ToObserver {
        match request {
            FromObserver::Status => ToObserver::Status(Box::new(self.status())),
            FromObserver::Failures { session } => match self.session_driver(&session) {
                Some(driver) => ToObserver::Failures(
                    (self.drivers.get(&driver))
                        .map(|d| d.stats.failures.iter().cloned().collect())
                        .unwrap_or_default(),
                ),
                None => ToObserver::Error(unknown_session(&session)),
            },
            FromObserver::Cancel { session, ids } => match self.session_driver(&session) {
                Some(driver) => {
                    let ids =
                        (!ids.is_empty()).then(|| ids.into_iter().map(DriverTaskId::new).collect());
                    ToObserver::Cancelled(self.cancel(driver, ids))
                }
                None => ToObserver::Error(unknown_session(&session)),
            },
            FromObserver::ResumeAutoscaling => match &self.resume_autoscaler {
                Some(tx) => {
                    let was_paused = self.autoscale.as_ref().and_then(|a| a.paused.clone());
                    let _ = tx.send(());
                    ToObserver::Resumed { was_paused }
                }
                None => ToObserver::Error("this server does not autoscale (--autoscale)".into()),
            },
        }
    }

    /// The driver holding a session, by the session's name.
    fn session_driver(&self, session: &str) -> Option<DriverKey> {
        self.sessions.get(session).copied().filter(|d| self.drivers.contains_key(d))
    }
}

fn unknown_session(session: &str) -> String {
    format!(
        "the server has no session `{session}` (see `blitzen-server status` for the sessions it \
         holds)"
    )
}
