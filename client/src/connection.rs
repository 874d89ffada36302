//! One connection of an agent to its server: tasks in, results out, heartbeats. A small type
//! with one method per thing that can happen, driven by [`Connection::serve`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use blitzen_common::pool::{Job, JobResult};
use blitzen_common::task::TaskEntry;
use blitzen_net::{FramedReader, NetError, spawn_writer};
use blitzen_protocol::cluster::{AgentResult, Assignment, FromAgent, ToAgent};
use blitzen_protocol::ids::{JobId, TaskKey};
use blitzen_protocol::{Finished, Outcome};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Work;

/// An agent counts its server gone after three heartbeat intervals without a byte from it plus
/// this much: a server that stalls for a few seconds (a paused VM, heavy swapping) should find
/// its agents still there when it wakes, and on a link silent both ways the server, which
/// counts the agent lost after three intervals, notices first — so the agent's next connection
/// finds its old one gone and its late results expected.
const SERVER_SILENCE_EXTRA: Duration = Duration::from_secs(10);

/// How a connection ended.
pub(crate) enum End {
    /// The agent was asked to stop.
    Stop,
    /// The connection is gone (why); the agent reconnects.
    Lost(String),
}

/// The connection is gone: its writer's channel has closed.
struct Closed;

impl From<Closed> for End {
    fn from(_: Closed) -> Self {
        End::Lost("the connection closed".into())
    }
}

/// One connection's state.
pub(crate) struct Connection<'a> {
    /// The tasks compiled into this binary, in the order the agent announced them: an
    /// assignment's kind indexes this.
    entries: &'a [&'static TaskEntry],
    /// The pool and what it holds for this run of the server.
    work: &'a mut Work,
    /// Frames to the server, batched by a writer task.
    writer: mpsc::UnboundedSender<FromAgent>,
    /// Tasks assigned on this connection and not finished yet. When the connection ends they
    /// join `Work::earlier`, to be delivered as recovered on the next one.
    current: HashSet<TaskKey>,
    /// Whether anything was sent since the last heartbeat tick: a heartbeat is sent only into
    /// silence.
    sent_since_tick: bool,
    /// Results sent and not yet acknowledged by the server. When the connection ends they
    /// join `Work::unsent`, to go out again as recovered on the next one.
    unacked: HashMap<TaskKey, AgentResult>,
}

impl<'a> Connection<'a> {
    /// Starts serving an admitted connection.
    pub(crate) fn new(
        entries: &'a [&'static TaskEntry],
        work: &'a mut Work,
        write: OwnedWriteHalf,
    ) -> Self {
        let (writer, _) = spawn_writer::<FromAgent>(write);
        let mut connection = Self {
            entries,
            work,
            writer,
            current: HashSet::new(),
            sent_since_tick: false,
            unacked: HashMap::new(),
        };
        // Results the last connection sent without hearing they arrived go out again first.
        let unsent = std::mem::take(&mut connection.work.unsent);
        if !unsent.is_empty() {
            info!(count = unsent.len(), "sending again results the server had not acknowledged");
            connection.unacked.extend(unsent.iter().map(|r| (r.key, r.clone())));
            let _ = connection.send(FromAgent::Recovered(unsent));
        }
        connection
    }

    /// Serves until `shutdown` is cancelled or the connection is lost.
    pub(crate) async fn serve(
        mut self,
        mut reader: FramedReader,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> End {
        let mut ticks = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = 3 * heartbeat + SERVER_SILENCE_EXTRA;
        let end = loop {
            // Biased: after a pause (the process was stopped), a closed connection is noticed
            // before results are written into it and lost; they go out on the next connection.
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break End::Stop,
                message = reader.next_alive::<ToAgent>(silence) => match message {
                    Ok(Some(ToAgent::Run(tasks))) => self.on_tasks(tasks),
                    Ok(Some(ToAgent::Heartbeat)) => Ok(()),
                    Ok(Some(ToAgent::Ack(keys))) => {
                        for key in keys {
                            self.unacked.remove(&key);
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
                Some(keys) = self.work.started.recv() => self.on_started(keys),
                _ = ticks.tick() => self.on_tick(),
            };
            if let Err(closed) = step {
                break closed.into();
            }
        };
        // What is still running was assigned on this connection: delivered later as recovered.
        self.work.earlier.extend(self.current);
        self.work.unsent.extend(self.unacked.into_values());
        end
    }

    /// Tasks from the server go to the pool; a kind this agent never announced is answered
    /// `UnknownTask` at once.
    fn on_tasks(&mut self, tasks: Vec<Assignment>) -> Result<(), Closed> {
        debug!(count = tasks.len(), "tasks received");
        let mut unknown = Vec::new();
        for t in tasks {
            let Some(entry) = self.entries.get(t.kind.get() as usize) else {
                warn!(key = %t.key, kind = %t.kind, "the server sent a task kind this agent never announced");
                unknown.push(t.key);
                continue;
            };
            self.current.insert(t.key);
            let job = Job {
                id: JobId::from(t.key),
                name: entry.name.into(),
                fingerprint: entry.fingerprint,
                args: t.args,
                timeout: t.timeout_ms.map(Duration::from_millis),
                retries: t.retries,
            };
            if self.work.pool.submit(job).is_err() {
                break;
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let done = unknown.into_iter().map(|key| AgentResult {
            key,
            worker_pid: None,
            run: Finished::unstarted(Outcome::UnknownTask),
        });
        self.send(FromAgent::Done(done.collect()))
    }

    /// Results from the pool: those of this connection's tasks go out as done, those of
    /// tasks assigned on an earlier connection as recovered.
    fn on_results(&mut self, mut batch: Vec<JobResult>) -> Result<(), Closed> {
        while let Ok(more) = self.work.results.try_recv() {
            batch.extend(more);
        }
        let (mut done, mut recovered) = (Vec::new(), Vec::new());
        for r in batch {
            let key = TaskKey::from(r.id);
            let result = AgentResult { key, worker_pid: r.worker, run: r.run };
            if self.current.remove(&key) {
                self.unacked.insert(key, result.clone());
                done.push(result);
            } else if self.work.earlier.remove(&key) {
                self.unacked.insert(key, result.clone());
                recovered.push(result);
            }
        }
        if !recovered.is_empty() {
            info!(count = recovered.len(), "delivering results finished while disconnected");
            self.send(FromAgent::Recovered(recovered))?;
        }
        if !done.is_empty() {
            self.send(FromAgent::Done(done))?;
        }
        self.sent_since_tick = true;
        Ok(())
    }

    /// Tasks with a timeout started on a worker: the server holds them to their deadline.
    fn on_started(&mut self, mut jobs: Vec<JobId>) -> Result<(), Closed> {
        while let Ok(more) = self.work.started.try_recv() {
            jobs.extend(more);
        }
        let keys: Vec<TaskKey> =
            jobs.into_iter().map(TaskKey::from).filter(|k| self.current.contains(k)).collect();
        if keys.is_empty() { Ok(()) } else { self.send(FromAgent::Started(keys)) }
    }

    /// A heartbeat, if nothing else was sent since the last tick.
    fn on_tick(&mut self) -> Result<(), Closed> {
        if !self.sent_since_tick {
            self.send(FromAgent::Heartbeat)?;
        }
        self.sent_since_tick = false;
        Ok(())
    }

    fn send(&self, message: FromAgent) -> Result<(), Closed> {
        self.writer.send(message).map_err(|_| Closed)
    }
}
