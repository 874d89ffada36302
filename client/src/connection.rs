//! One connection of an agent to its server: tasks in, results out, heartbeats. A small type
//! with one method per thing that can happen, driven by [`Connection::serve`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_common::pool::{Report, RunTask};
use blitzen_common::registry;
use blitzen_common::task::TaskEntry;
use blitzen_net::{FramedReader, NetError, spawn_writer};
use blitzen_protocol::cluster::{Assignment, FromAgent, ToAgent, WorkerReport};
use blitzen_protocol::ids::{JobId, ServerId, TaskKey};
use blitzen_protocol::inputs::InputPart;
use blitzen_protocol::output::AgentOutput;
use blitzen_protocol::{Finished, Lines, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Held, Leave, Unacked, Work, sleep_until};

/// An agent counts its server gone after three heartbeat intervals without a byte from it plus
/// this much: a server that stalls for a few seconds (a paused VM, heavy swapping) should find
/// its agents still there when it wakes, and on a link silent both ways the server, which
/// counts the agent lost after three intervals, notices first — so the agent's next connection
/// finds its old one gone and its late results expected.
const SERVER_SILENCE_EXTRA: Duration = Duration::from_secs(10);

/// How a connection ended.
pub(crate) enum End {
    /// The agent was asked to stop (a signal).
    Stop,
    /// The agent left the cluster on its own (idle timeout, time limit), said so, and handed
    /// back or finished what it held: it stops.
    Left(String),
    /// The connection is gone (why); the agent reconnects.
    Lost(String),
}

/// The connection is gone: its writer's channel has closed.
pub(crate) struct Closed;

impl From<Closed> for End {
    fn from(_: Closed) -> Self {
        End::Lost("the connection closed".into())
    }
}

/// One connection's state.
pub(crate) struct Connection<'a> {
    /// The tasks compiled into this binary, in the order the agent announced them: an
    /// assignment's kind indexes this.
    pub(crate) entries: &'a [&'static TaskEntry],
    /// The pool and what it holds for this server.
    pub(crate) work: &'a mut Work,
    /// Frames to the server, batched by a writer task.
    pub(crate) writer: mpsc::UnboundedSender<FromAgent>,
    /// This connection's number (see `Work::connection`).
    pub(crate) number: u64,
    /// Whether anything was sent since the last heartbeat tick: a heartbeat is sent only into
    /// silence.
    pub(crate) sent_since_tick: bool,
    /// Results sent and not yet acknowledged by the server. When the connection ends they
    /// join `Work::unsent`, to go out again as recovered on the next one.
    pub(crate) unacked: HashMap<TaskKey, Unacked>,
    /// While the restarted server has not answered the re-attach: its run, and the results
    /// finished meanwhile (sent once the tasks have their new keys).
    pub(crate) reattaching: Option<(ServerId, Vec<Report<JobId>>)>,
    /// What this agent already has of tasks from an earlier connection to the same run: their
    /// results sent again (`None`) or their jobs still running (`Some`). The server may have
    /// handed such a task out again — to this agent, now back — before it heard: it is not run
    /// a second time. Empty on a first connection, so the hot path pays one `is_empty`.
    pub(crate) earlier: HashMap<TaskKey, Option<JobId>>,
    /// The workers as last reported to the server ([`FromAgent::Workers`]).
    pub(crate) reported: Vec<WorkerReport>,
    /// Leaving the cluster: why, and whether the server has answered that no task follows.
    pub(crate) leaving: Option<(String, bool)>,
    /// The writer task, awaited when the agent stops so that its last words go out.
    written: Option<tokio::task::JoinHandle<()>>,
}

/// How often the agent tells the server what its workers run (when that changed, or while
/// anything runs).
const WORKERS_REPORT: Duration = Duration::from_millis(500);

impl<'a> Connection<'a> {
    /// Starts serving an admitted connection to the server's run `run`.
    pub(crate) fn new(
        entries: &'a [&'static TaskEntry],
        work: &'a mut Work,
        write: blitzen_net::WriteSide,
        run: ServerId,
    ) -> Self {
        let (writer, written) = spawn_writer::<FromAgent>(write);
        work.connection += 1;
        let number = work.connection;
        let mut connection = Self {
            entries,
            work,
            writer,
            number,
            sent_since_tick: false,
            unacked: HashMap::new(),
            reattaching: None,
            earlier: HashMap::new(),
            reported: Vec::new(),
            leaving: None,
            written: Some(written),
        };
        if connection.work.run != run {
            // The server restarted on its data directory: the tasks held are named by their
            // numbers there, and keep running if the server still has them.
            let running = connection.work.jobs.values().filter_map(|h| h.seq);
            let finished = connection.work.unsent.iter().filter_map(|u| u.seq);
            let seqs: Vec<u64> = running.chain(finished).collect();
            info!(
                tasks = seqs.len(),
                "the server restarted on its data directory; re-attaching with the tasks held"
            );
            connection.reattaching = Some((run, Vec::new()));
            let _ = connection.send(FromAgent::Reattach(seqs));
            return connection;
        }
        let running = (connection.work.jobs.iter())
            .filter(|(_, held)| held.connection != number)
            .map(|(&id, held)| (held.key, Some(id)));
        connection.earlier = running.collect();
        // Results the last connection sent without hearing they arrived go out again first.
        let unsent = std::mem::take(&mut connection.work.unsent);
        connection.earlier.extend(unsent.iter().map(|u| (u.result.id, None)));
        if !unsent.is_empty() {
            info!(count = unsent.len(), "sending again results the server had not acknowledged");
            let results = unsent.iter().map(|u| u.result.clone()).collect();
            connection.unacked.extend(unsent.into_iter().map(|u| (u.result.id, u)));
            let _ = connection.send_results(FromAgent::Recovered, results);
        }
        connection
    }

    /// Serves until `shutdown` is cancelled, the connection is lost, or the agent leaves (see
    /// [`Leave`]).
    pub(crate) async fn serve(
        mut self,
        mut reader: FramedReader,
        heartbeat: Duration,
        shutdown: &CancellationToken,
        leave: Leave,
    ) -> End {
        let mut ticks = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = 3 * heartbeat + SERVER_SILENCE_EXTRA;
        let mut reports = tokio::time::interval(WORKERS_REPORT);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let idle_until = match leave.idle {
                Some(idle) if self.leaving.is_none() && self.work.jobs.is_empty() => {
                    Some(self.work.idle_since + idle)
                }
                _ => None,
            };
            // Biased: after a pause (the process was stopped), a closed connection is noticed
            // before results are written into it and lost; they go out on the next connection.
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.send(FromAgent::Leaving { reason: "stopped by a signal".into() });
                    break End::Stop;
                }
                _ = sleep_until(leave.at), if leave.at.is_some() => {
                    // Whatever still runs is handed back: the server runs it elsewhere.
                    let reason = "its time limit is reached".to_string();
                    let _ = self.send(FromAgent::Leaving { reason: reason.clone() });
                    break End::Left(reason);
                }
                _ = sleep_until(idle_until), if idle_until.is_some() => {
                    let idle = leave.idle.unwrap_or_default().as_secs_f64();
                    self.leave(format!("it had no task for its idle timeout ({idle}s)"))
                }
                message = reader.next_alive::<ToAgent>(silence) => match message {
                    Ok(Some(ToAgent::Run(tasks))) => self.on_tasks(tasks),
                    Ok(Some(ToAgent::Share(piece))) => {
                        if let Err(e) = self.work.cache.write(piece).await {
                            // Its tasks end `Lost` when their worker cannot map it.
                            warn!(error = %e, "cannot cache a shared value");
                        }
                        Ok(())
                    }
                    Ok(Some(ToAgent::Unshare(keys))) => {
                        self.work.cache.forget(keys);
                        Ok(())
                    }
                    Ok(Some(ToAgent::Heartbeat)) => Ok(()),
                    Ok(Some(ToAgent::Ack(keys))) => {
                        for key in keys {
                            self.unacked.remove(&key);
                        }
                        Ok(())
                    }
                    Ok(Some(ToAgent::Reattached(kept))) => self.on_reattached(kept),
                    Ok(Some(ToAgent::Cancel(keys))) => self.on_cancel(keys),
                    Ok(Some(ToAgent::Released)) => {
                        if let Some((_, released)) = &mut self.leaving {
                            *released = true;
                        }
                        Ok(())
                    }
                    Err(NetError::Silent(limit)) => {
                        break End::Lost(format!("nothing arrived from the server for {limit:?}"));
                    }
                    Ok(Some(ToAgent::ShuttingDown { reason })) => break End::Lost(reason),
                    Ok(None) => break End::Lost("the server closed the connection".into()),
                    Err(e) => break End::Lost(format!("bad frame from the server: {e}")),
                },
                Some(batch) = self.work.results.recv() => self.on_results(batch),
                Some(first) = self.work.output.recv() => self.on_output(Some(first)),
                Some(keys) = self.work.started.recv() => self.on_started(keys),
                _ = ticks.tick() => self.on_tick(),
                _ = reports.tick() => self.report_workers().await,
            };
            if let Err(closed) = step {
                break closed.into();
            }
            // Released, with every task done and every result acknowledged: nothing is left
            // to say.
            if let Some((reason, true)) = &self.leaving
                && self.work.jobs.is_empty()
                && self.unacked.is_empty()
            {
                break End::Left(reason.clone());
            }
        };
        // What is still running goes out as recovered on the next connection; results that
        // finished while re-attaching wait in the pool's place.
        if let Some((_, finished)) = self.reattaching.take() {
            for r in finished {
                let Some(held) = self.work.jobs.remove(&r.id) else { continue };
                let mut run = r.run;
                self.work.add_unstreamed(r.id, &mut run);
                let result = Report { id: held.key, worker: r.worker, run };
                self.work.unsent.push(Unacked { seq: held.seq, result });
            }
        }
        self.work.unsent.extend(self.unacked.into_values());
        if matches!(end, End::Stop | End::Left(_)) {
            // The last words (the goodbye) go out before the agent stops.
            drop(self.writer);
            if let Some(written) = self.written.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
            }
        }
        end
    }

    /// Tells the server this agent takes no more tasks; it leaves once the server has
    /// answered and what it holds is done.
    fn leave(&mut self, reason: String) -> Result<(), Closed> {
        info!(%reason, held = self.work.jobs.len(), "leaving the cluster: taking no more tasks");
        self.leaving = Some((reason.clone(), false));
        self.send(FromAgent::Leaving { reason })
    }

    /// Tasks from the server go to the pool; a kind this agent never announced is answered
    /// `UnknownTask` at once.
    fn on_tasks(&mut self, tasks: Vec<Assignment>) -> Result<(), Closed> {
        debug!(count = tasks.len(), "tasks received");
        let (mut unknown, mut again) = (Vec::new(), Vec::new());
        for t in tasks {
            if !self.earlier.is_empty()
                && let Some(earlier) = self.earlier.remove(&t.key)
            {
                let number = self.number;
                // Still running: its result goes out as done on this connection.
                let running = earlier.and_then(|id| self.work.jobs.get_mut(&id));
                if let Some(held) = running {
                    held.connection = number;
                    debug!(key = %t.key, "a task handed out again is still running here; not run twice");
                    continue;
                }
                // Finished: answered with the result this agent holds (if the server has
                // acknowledged it meanwhile, it runs again, and the server drops the duplicate).
                if let Some(u) = self.unacked.get(&t.key) {
                    again.push(u.result.clone());
                    debug!(key = %t.key, "a task handed out again has finished here; not run twice");
                    continue;
                }
            }
            let Some(entry) = self.entries.get(t.kind.get() as usize) else {
                warn!(key = %t.key, kind = %t.kind, "the server sent a task kind this agent never announced");
                unknown.push(t.key);
                continue;
            };
            if t.inputs.iter().flat_map(|i| &i.parts).any(|p| matches!(p, InputPart::File(_))) {
                // Files are this agent's own to name (its cache's), never the server's.
                warn!(key = %t.key, "the server sent a task whose arguments name a file; refused");
                let message = "its arguments name a file, which only an agent may".to_string();
                let run = Finished::unstarted(Outcome::BadArguments { message });
                again.push(Report { id: t.key, worker: None, run });
                continue;
            }
            let id = JobId::new(self.work.next_job);
            self.work.next_job += 1;
            let held = Held { key: t.key, seq: t.seq, connection: self.number };
            self.work.jobs.insert(id, held);
            // The registry was built before the agent connected.
            let group = registry::global().map_or(0, |r| r.group_of(entry.name, &t.args));
            // Shared values are files in the cache, which the worker maps.
            let inputs = t.inputs.map(|mut inputs| {
                for part in &mut inputs.parts {
                    if let InputPart::Shared(key) = part {
                        *part = InputPart::File(self.work.cache.path(*key).display().to_string());
                    }
                }
                inputs
            });
            let task = RunTask {
                stream: t.stream,
                timeout: t.timeout_ms.map(Duration::from_millis),
                retries: t.retries,
                group,
                inputs,
                ..RunTask::new(id, entry.name, entry.fingerprint, t.args)
            };
            let job = task.holding(t.request.map(|r| Arc::new(*r)));
            if self.work.pool.submit(job).is_err() {
                break;
            }
        }
        let unknown = unknown.into_iter().map(|key| Report {
            id: key,
            worker: None,
            run: Finished::unstarted(Outcome::UnknownTask),
        });
        again.extend(unknown);
        self.send_results(FromAgent::Done, again)
    }

    /// Results from the pool: those of this connection's tasks go out as done, those of
    /// tasks assigned on an earlier connection as recovered.
    pub(crate) fn on_results(&mut self, mut batch: Vec<Report<JobId>>) -> Result<(), Closed> {
        while let Ok(more) = self.work.results.try_recv() {
            batch.extend(more);
        }
        // A task's lines go out before its result.
        self.on_output(None)?;
        if let Some((_, finished)) = &mut self.reattaching {
            // Their keys may change: sent once the server has answered.
            finished.extend(batch);
            return Ok(());
        }
        let (mut done, mut recovered) = (Vec::new(), Vec::new());
        for r in batch {
            let Some(held) = self.work.jobs.remove(&r.id) else {
                debug!(job = %r.id, "result of a task dropped when re-attaching; discarded");
                continue;
            };
            let mut run = r.run;
            self.work.add_unstreamed(r.id, &mut run);
            let result = Report { id: held.key, worker: r.worker, run };
            self.unacked.insert(held.key, Unacked { seq: held.seq, result: result.clone() });
            if held.connection == self.number {
                done.push(result);
            } else {
                recovered.push(result);
            }
        }
        if self.work.jobs.is_empty() {
            self.work.idle_since = Instant::now();
        }
        if !recovered.is_empty() {
            info!(count = recovered.len(), "delivering results finished while disconnected");
            self.send_results(FromAgent::Recovered, recovered)?;
        }
        self.send_results(FromAgent::Done, done)?;
        self.sent_since_tick = true;
        Ok(())
    }

    /// Lines streamed tasks printed (`first`, and all the pool has handed on since) go to the
    /// server; those of tasks assigned on an earlier connection are dropped.
    fn on_output(&mut self, first: Option<(JobId, Lines)>) -> Result<(), Closed> {
        let mut batch = Vec::new();
        let number = self.number;
        let work = &mut *self.work;
        let mut take = |(id, lines): (JobId, Lines)| match work.jobs.get(&id) {
            Some(held) if held.connection == number => {
                batch.push(AgentOutput { key: held.key, lines });
            }
            // Its server is not the one it was assigned by any more: counted in its result.
            Some(_) => work.unstreamed.count(id, lines.stream, lines.count()),
            None => debug!(job = %id, "output of a task dropped when re-attaching; dropped"),
        };
        first.into_iter().for_each(&mut take);
        while let Ok(more) = work.output.try_recv() {
            take(more);
        }
        if batch.is_empty() { Ok(()) } else { self.send(FromAgent::Output(batch)) }
    }

    /// Tasks with a timeout started on a worker: the server holds them to their deadline.
    fn on_started(&mut self, mut jobs: Vec<JobId>) -> Result<(), Closed> {
        while let Ok(more) = self.work.started.try_recv() {
            jobs.extend(more);
        }
        let keys: Vec<TaskKey> = (jobs.into_iter())
            .filter_map(|id| self.work.jobs.get(&id))
            .filter(|held| held.connection == self.number)
            .map(|held| held.key)
            .collect();
        if keys.is_empty() { Ok(()) } else { self.send(FromAgent::Started(keys)) }
    }

    /// The server cancels tasks: the pool withdraws them (killing the worker of a running one)
    /// and each is answered with its one result as usual. Keys this agent does not hold are
    /// ignored: their results are on the way.
    fn on_cancel(&mut self, keys: Vec<TaskKey>) -> Result<(), Closed> {
        let keys: std::collections::HashSet<TaskKey> = keys.into_iter().collect();
        let number = self.number;
        let ids: Vec<JobId> = (self.work.jobs.iter())
            .filter(|(_, held)| held.connection == number && keys.contains(&held.key))
            .map(|(&id, _)| id)
            .collect();
        debug!(asked = keys.len(), held = ids.len(), "the server cancels tasks");
        if !ids.is_empty() {
            let _ = self.work.pool.submitter().cancel(ids);
        }
        Ok(())
    }

    /// Tells the server what each worker runs, when that changed or while anything runs (so
    /// the run times it shows move).
    async fn report_workers(&mut self) -> Result<(), Closed> {
        let now = Instant::now();
        let number = self.number;
        let views = self.work.pool.submitter().workers().await;
        let report: Vec<WorkerReport> = (views.into_iter())
            .map(|v| WorkerReport {
                pid: v.pid,
                running: v.running.and_then(|(id, since)| {
                    let held = self.work.jobs.get(&id).filter(|h| h.connection == number)?;
                    Some((held.key, now.saturating_duration_since(since).as_millis() as u64))
                }),
            })
            .collect();
        let busy = report.iter().any(|w| w.running.is_some());
        let same = |a: &[WorkerReport], b: &[WorkerReport]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.pid == y.pid && x.running.map(|r| r.0) == y.running.map(|r| r.0)
                })
        };
        if !busy && same(&report, &self.reported) {
            return Ok(());
        }
        self.reported = report.clone();
        self.send(FromAgent::Workers(report))
    }

    /// A heartbeat, if nothing else was sent since the last tick.
    fn on_tick(&mut self) -> Result<(), Closed> {
        if !self.sent_since_tick {
            self.send(FromAgent::Heartbeat)?;
        }
        self.sent_since_tick = false;
        Ok(())
    }

    pub(crate) fn send(&self, message: FromAgent) -> Result<(), Closed> {
        self.writer.send(message).map_err(|_| Closed)
    }

    /// Sends results as `message`s (`FromAgent::Done` or `FromAgent::Recovered`) of at most
    /// [`BATCH_BYTES`](blitzen_protocol::BATCH_BYTES) each: large results never make one
    /// message past the frame limit.
    pub(crate) fn send_results(
        &self,
        message: fn(Vec<Report<TaskKey>>) -> FromAgent,
        results: Vec<Report<TaskKey>>,
    ) -> Result<(), Closed> {
        for batch in blitzen_protocol::by_size(results, Report::payload_len) {
            self.send(message(batch))?;
        }
        Ok(())
    }
}
