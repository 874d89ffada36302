//! The driver's connection to the server, on the dispatcher's runtime thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_net::{Admitted, ConnectError, NetError, Secret};
use blitzen_protocol::cluster::{
    FromDriver, Role, SharePiece, Submission, TaskKind, ToDriver, Welcome,
};
use blitzen_protocol::ids::{DriverTaskId, KindIndex};
use blitzen_protocol::{BATCH_BYTES, Outcome, Request, by_size};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Handoff;
use super::backlog::Backlog;
use crate::dispatcher::Call;
use crate::error::DispatchError;
use crate::table::ResultTable;

/// Where and how to connect.
pub(super) struct Endpoint {
    /// `host:port`.
    pub server: String,
    /// The cluster's shared secret, if it has one.
    pub secret: Option<Secret>,
    /// How the connection is encrypted (with a secret).
    pub tls: blitzen_net::PeerTls,
    /// How long to keep trying the first time.
    pub connect_timeout: Duration,
    /// How long to keep trying to get back after a connection is lost.
    pub reconnect_window: Duration,
    /// How often to send something; the server is counted gone after three intervals without a
    /// byte from it.
    pub heartbeat: Duration,
    /// The driver's session, which a new connection takes over.
    pub session: String,
    /// Whether the first connection attaches to a session another process left.
    pub attach: bool,
    /// Set when the dispatcher detaches: it stops without a goodbye.
    pub detached: Arc<std::sync::atomic::AtomicBool>,
}

/// What the dispatcher hands the connection.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A task to submit.
    Call(Call),
    /// Tasks to cancel, by number.
    Cancel(Vec<DriverTaskId>),
    /// A value to share among tasks, under this number.
    Share(u64, bytes::Bytes),
    /// A shared value no new task will take.
    Unshare(u64),
}

/// How one connection ended.
enum End {
    /// The dispatcher stopped; the goodbye is sent.
    Stop,
    /// The server is shutting down: what it holds is gone.
    ShutDown(String),
    /// The connection is gone (why): reconnect.
    Lost(String),
    /// The session cannot be opened (attaching to one the server does not know).
    Refused(DispatchError),
}

/// The connection's life: connect (retrying until `connect_timeout`), then submissions out and
/// results in until `stop` is cancelled or the server goes away. A lost connection is made
/// again, within the reconnect window: the session is taken over, what the server had not
/// accepted is sent again, and every result owed arrives (those seen twice are ignored by the
/// table).
pub(super) async fn drive(
    endpoint: Endpoint,
    table: Arc<ResultTable>,
    handoff: Arc<Handoff>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
    connected: std::sync::mpsc::Sender<Result<(), DispatchError>>,
) {
    let server = endpoint.server.clone();
    let mut connected = Some(connected);
    let mut backlog = Backlog::default();
    let mut server_id = None;
    let mut lost_for: Option<String> = None;
    let mut pause = Duration::from_millis(25);
    let ended = loop {
        let window =
            if server_id.is_none() { endpoint.connect_timeout } else { endpoint.reconnect_window };
        let attempt = tokio::select! {
            attempt = connect(&endpoint, window, endpoint.attach && lost_for.is_none()) => attempt,
            _ = stop.cancelled() => break None,
        };
        let admitted = match attempt {
            Ok(admitted) => admitted,
            Err(cause) => {
                let error = DispatchError::Connect { server: server.clone(), cause };
                let reason = match &lost_for {
                    Some(why) => format!("{why}, and reconnecting failed: {error}"),
                    None => error.to_string(),
                };
                warn!(%server, %reason, "cannot reach the server");
                if let Some(tx) = connected.take() {
                    let _ = tx.send(Err(error));
                }
                break Some(reason);
            }
        };
        let this_run = admitted.greeting.server_id;
        if server_id.is_some_and(|id| id != this_run) {
            break Some(
                "the server restarted and knows nothing of the task (it keeps no data directory)"
                    .to_string(),
            );
        }
        server_id = Some(this_run);
        let encrypted = admitted.encrypted;
        let key_exchange = admitted.key_exchange.as_deref().unwrap_or("none");
        match &lost_for {
            Some(_) => info!(%server, encrypted, %key_exchange, "reconnected to the server"),
            None => info!(%server, encrypted, %key_exchange, "connected to the server"),
        }
        let connection = Connection {
            table: &table,
            handoff: &handoff,
            heartbeat: endpoint.heartbeat,
            attach: endpoint.attach && lost_for.is_none(),
            session: &endpoint.session,
            detached: &endpoint.detached,
        };
        let began = Instant::now();
        match connection.serve(admitted, &mut backlog, &mut queue, &stop, &mut connected).await {
            End::Stop => break None,
            End::ShutDown(reason) => break Some(reason),
            End::Refused(error) => {
                let reason = error.to_string();
                if let Some(tx) = connected.take() {
                    let _ = tx.send(Err(error));
                }
                break Some(reason);
            }
            End::Lost(reason) => {
                warn!(%server, %reason, window = ?endpoint.reconnect_window, "connection to the server lost; reconnecting");
                lost_for = Some(reason);
            }
        }
        // A connection that keeps failing at once is not retried in a tight loop.
        pause = if began.elapsed() < Duration::from_secs(1) {
            (pause * 2).min(Duration::from_secs(1))
        } else {
            Duration::from_millis(25)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break None,
        }
    };
    handoff.end(ended.as_deref().unwrap_or("the dispatcher stopped"));
    if let Some(reason) = ended {
        warn!(%server, %reason, "connection to the server lost");
        table.close(Outcome::Lost { reason });
    }
}

/// One connection, from the session's first message to its end.
struct Connection<'a> {
    table: &'a ResultTable,
    handoff: &'a Handoff,
    heartbeat: Duration,
    /// Attach to the session: it must exist, and its tasks are adopted.
    attach: bool,
    session: &'a str,
    /// The dispatcher detached: stop without a goodbye.
    detached: &'a std::sync::atomic::AtomicBool,
}

impl Connection<'_> {
    async fn serve(
        self,
        admitted: Admitted<Welcome>,
        backlog: &mut Backlog,
        queue: &mut mpsc::UnboundedReceiver<Outgoing>,
        stop: &CancellationToken,
        connected: &mut Option<std::sync::mpsc::Sender<Result<(), DispatchError>>>,
    ) -> End {
        let Admitted { mut reader, write, .. } = admitted;
        // Acknowledgements and heartbeats do not wait behind queued submissions: the server
        // holds each result until acknowledged, and counts silence.
        let (writer, written) = blitzen_net::spawn_outbox::<FromDriver>(write, QUEUED_SUBMITS);
        let silence = (3 * self.heartbeat).max(Duration::from_secs(1));
        let mut declared = Declared::default();
        // The session first: what the server holds decides what is sent again.
        let opening = loop {
            match reader.next_alive::<ToDriver>(silence).await {
                Ok(Some(ToDriver::Heartbeat)) => continue,
                other => break other,
            }
        };
        match opening {
            Ok(Some(ToDriver::Session { resumed, accepted, held, next_id, shares })) => {
                if self.attach {
                    if !resumed {
                        return End::Refused(DispatchError::UnknownSession(self.session.into()));
                    }
                    info!(tasks = held.len(), "attached to the session");
                    self.table.adopt(&held, next_id);
                    // What the other process submitted is not this one's to count.
                    backlog.attached(accepted);
                }
                if let Some(tx) = connected.take() {
                    let _ = tx.send(Ok(()));
                }
                backlog.session(resumed, accepted);
                self.handoff.accepted(backlog.accepted);
                let held_back = backlog.acknowledgeable();
                if !held_back.is_empty() {
                    let _ = writer.send_urgent(FromDriver::Ack(held_back));
                }
                if resumed || !backlog.calls.is_empty() {
                    info!(
                        resent = backlog.calls.len(),
                        "session resumed; sending again what the server had not taken"
                    );
                }
                // Shared values the server lacks go before the tasks that take them.
                for (&id, bytes) in backlog.shares.iter().filter(|(id, _)| !shares.contains(id)) {
                    for piece in SharePiece::split(id, bytes) {
                        let _ = writer.send(FromDriver::Share(piece));
                    }
                }
                let calls = Vec::from_iter(backlog.calls.iter().cloned());
                for batch in by_size(calls, Call::payload_len) {
                    for batch in batch.chunks(SUBMIT_BATCH) {
                        let mut kinds = Vec::new();
                        let tasks = (batch.iter())
                            .map(|c| declared.submission(c.clone(), &mut kinds))
                            .collect();
                        let _ = writer.send(FromDriver::Submit { kinds, tasks });
                    }
                }
                if !backlog.cancels.is_empty() {
                    let mut ids: Vec<DriverTaskId> = backlog.cancels.iter().copied().collect();
                    ids.sort_unstable();
                    let _ = writer.send(FromDriver::Cancel(ids));
                }
            }
            Ok(Some(other)) => return End::Lost(format!("the server opened with {other:?}")),
            Ok(None) => return End::Lost("the server closed the connection".into()),
            Err(e) => return End::Lost(format!("the session did not open: {e}")),
        }
        let mut ticks = tokio::time::interval(self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if !self.detached.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = writer.send(FromDriver::Bye);
                    }
                    break End::Stop;
                }
                message = reader.next_alive::<ToDriver>(silence) => match message {
                    Ok(Some(ToDriver::Heartbeat | ToDriver::Session { .. })) => {}
                    Ok(Some(ToDriver::Accepted { count })) => {
                        backlog.accepted_in_session(count);
                        self.handoff.accepted(backlog.accepted);
                        let held_back = backlog.acknowledgeable();
                        if !held_back.is_empty() {
                            let _ = writer.send_urgent(FromDriver::Ack(held_back));
                        }
                    }
                    Ok(Some(ToDriver::Results(reports))) => {
                        let ids: Vec<DriverTaskId> = reports.iter().map(|r| r.id).collect();
                        debug!(count = ids.len(), "results received");
                        if !backlog.cancels.is_empty() {
                            for id in &ids {
                                backlog.cancels.remove(id);
                            }
                        }
                        self.table.complete(reports);
                        // Once detaching, results stay the server's to give to the process
                        // that attaches to the session: this one may end before it says so.
                        let keep = self.detached.load(std::sync::atomic::Ordering::SeqCst);
                        let ids = if keep { Vec::new() } else { backlog.acknowledge_now(ids) };
                        if !ids.is_empty() {
                            let _ = writer.send_urgent(FromDriver::Ack(ids));
                        }
                    }
                    Ok(Some(ToDriver::Output(output))) => {
                        for o in output {
                            self.table.output.push(o.id, Some(o.host), o.lines);
                        }
                    }
                    Ok(Some(ToDriver::Mismatch(mismatch))) => {
                        warn!("{mismatch}: its tasks wait until an agent built alike connects");
                    }
                    Ok(Some(ToDriver::Waiting { ids, reason })) => {
                        debug!(tasks = ids.len(), %reason, "tasks wait for an agent");
                        self.table.note(&ids, &reason);
                    }
                    Ok(Some(ToDriver::Stalled { tasks, waited_ms, reason })) => {
                        let waited = Duration::from_secs(waited_ms / 1000);
                        warn!(
                            tasks,
                            ?waited,
                            %reason,
                            "tasks are waiting: no connected agent can run them (they wait for \
                             one to come; an unrunnable limit ends them Lost instead: \
                             `with_unrunnable_limit` in Rust, `unrunnable_limit=` in Python)"
                        );
                    }
                    Ok(Some(ToDriver::ShuttingDown { reason })) => {
                        break End::ShutDown(format!("the server shut down ({reason}) before the task finished"));
                    }
                    Ok(None) => break End::Lost("the server closed the connection".into()),
                    Err(NetError::Silent(limit)) => {
                        break End::Lost(format!(
                            "nothing arrived from the server for {limit:?} (a frozen server or a \
                             cut link)"
                        ));
                    }
                    Err(e) => break End::Lost(format!("bad frame from the server: {e}")),
                },
                _ = ticks.tick() => {
                    let _ = writer.send_urgent(FromDriver::Heartbeat);
                }
                // Calls wait in the queue, not as submissions, while the socket is behind.
                _ = writer.room(), if !writer.has_room() => {}
                Some(first) = queue.recv(), if writer.has_room() => {
                    let (mut kinds, mut tasks) = (Vec::new(), Vec::new());
                    // The arguments gathered: a submission stays within `BATCH_BYTES`.
                    let mut gathered = 0;
                    let mut next = Some(first);
                    // Calls are gathered into one submission; a cancel goes out in its place
                    // among them, after the calls before it.
                    while let Some(outgoing) = next.take() {
                        match outgoing {
                            Outgoing::Call(mut call) => {
                                // Inputs that ended here since: filled in before it leaves.
                                if let Err(outcome) = self.table.fill_ended(&mut call) {
                                    self.table.settle(call.id, outcome);
                                    if tasks.len() < SUBMIT_BATCH {
                                        next = queue.try_recv().ok();
                                    }
                                    continue;
                                }
                                if !tasks.is_empty() && gathered + call.payload_len() > BATCH_BYTES {
                                    let batch = std::mem::take(&mut tasks);
                                    let kinds = std::mem::take(&mut kinds);
                                    let _ = writer.send(FromDriver::Submit { kinds, tasks: batch });
                                    gathered = 0;
                                }
                                gathered += call.payload_len();
                                backlog.sent(call.clone());
                                tasks.push(declared.submission(call, &mut kinds));
                            }
                            Outgoing::Share(id, bytes) => {
                                if !tasks.is_empty() {
                                    let batch = std::mem::take(&mut tasks);
                                    let kinds = std::mem::take(&mut kinds);
                                    let _ = writer.send(FromDriver::Submit { kinds, tasks: batch });
                                    gathered = 0;
                                }
                                for piece in SharePiece::split(id, &bytes) {
                                    let _ = writer.send(FromDriver::Share(piece));
                                }
                                backlog.shares.insert(id, bytes);
                            }
                            Outgoing::Unshare(id) => {
                                backlog.shares.remove(&id);
                                let _ = writer.send(FromDriver::Unshare(vec![id]));
                            }
                            Outgoing::Cancel(ids) => {
                                if !tasks.is_empty() {
                                    let batch = std::mem::take(&mut tasks);
                                    let kinds = std::mem::take(&mut kinds);
                                    let _ = writer.send(FromDriver::Submit { kinds, tasks: batch });
                                    gathered = 0;
                                }
                                debug!(count = ids.len(), "cancelling tasks");
                                backlog.cancels.extend(ids.iter().copied());
                                let _ = writer.send(FromDriver::Cancel(ids));
                            }
                        }
                        if tasks.len() < SUBMIT_BATCH {
                            next = queue.try_recv().ok();
                        }
                    }
                    if !tasks.is_empty() {
                        let _ = writer.send(FromDriver::Submit { kinds, tasks });
                    }
                }
            }
        };
        drop(writer);
        if matches!(end, End::Stop) {
            // Let the goodbye reach the server before the runtime goes away.
            let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
        }
        end
    }
}

/// Most submissions in one frame.
const SUBMIT_BATCH: usize = 65_536;

/// Submission frames queued for the writer at most: a task waits in the dispatcher's queue
/// until the socket takes what is before it, so the calls not yet sent are held once.
const QUEUED_SUBMITS: usize = 2;

/// Connects and shakes hands, retrying with backoff until the connect timeout; refusals are
/// final.
async fn connect(
    endpoint: &Endpoint,
    limit: Duration,
    attach: bool,
) -> Result<Admitted<Welcome>, ConnectError> {
    let (server, secret) = (endpoint.server.as_str(), endpoint.secret.as_ref());
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(50);
    let name = blitzen_common::cli::process_name("driver");
    let mut first = true;
    loop {
        let heartbeat_ms = endpoint.heartbeat.as_millis() as u64;
        let session = endpoint.session.clone();
        let role = Role::Driver { name: name.clone(), session, attach, heartbeat_ms };
        match blitzen_net::connect(server, role, secret, &endpoint.tls, limit).await {
            Ok(conn) => return Ok(conn),
            // A name that does not resolve is a typo far more often than a slow DNS.
            Err(e @ ConnectError::Resolve { .. }) => return Err(e),
            Err(e) if e.is_refusal() || Instant::now() + backoff >= deadline => return Err(e),
            Err(e) => {
                if first {
                    first = false;
                    let left = deadline.saturating_duration_since(Instant::now());
                    warn!(%server, error = %e, "cannot reach the server yet; retrying for up to {}s", left.as_secs_f64().ceil());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What tells one declared kind from another: name, fingerprint, request, label, streaming,
/// priority.
type KindKey = (&'static str, u64, Option<Arc<Request>>, Option<&'static str>, bool, i32);

/// The kinds of task this connection has declared to the server, by number.
#[derive(Debug, Default)]
struct Declared {
    /// By name, fingerprint, request, label, streaming and priority: the same task asking for
    /// other resources, shown under another label, streamed or of another priority, is another
    /// kind to the server.
    numbers: HashMap<KindKey, KindIndex>,
}

impl Declared {
    /// The call as a submission; a kind not declared yet is added to `kinds`, which goes out
    /// in the same frame.
    fn submission(&mut self, call: Call, kinds: &mut Vec<TaskKind>) -> Submission {
        let next = KindIndex::new(self.numbers.len() as u32);
        let key =
            (call.name, call.fingerprint, call.request, call.label, call.stream, call.priority);
        let kind = *self.numbers.entry(key).or_insert_with_key(
            |(_, _, request, label, stream, priority)| {
                kinds.push(TaskKind {
                    name: call.name.to_string(),
                    fingerprint: call.fingerprint,
                    signature: call.signature.to_string(),
                    request: request.as_deref().cloned(),
                    label: label.map(str::to_string),
                    stream: *stream,
                    priority: *priority,
                });
                next
            },
        );
        Submission {
            id: call.id,
            kind,
            args: call.args,
            timeout_ms: call.timeout.map(|t| t.as_millis() as u64),
            retries: call.retries,
            unrunnable_limit_ms: call.unrunnable_limit.map(|t| t.as_millis() as u64),
            inputs: call.inputs,
        }
    }
}
