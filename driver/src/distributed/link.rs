//! The driver's connection to the server, on the dispatcher's runtime thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_net::{Admitted, ConnectError, NetError, Secret};
use blitzen_protocol::Outcome;
use blitzen_protocol::cluster::{FromDriver, Role, Submission, TaskKind, ToDriver, Welcome};
use blitzen_protocol::ids::{DriverTaskId, KindIndex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Handoff;
use crate::dispatcher::Call;
use crate::error::DispatchError;
use crate::table::ResultTable;

/// Where and how to connect.
pub(super) struct Endpoint {
    /// `host:port`.
    pub server: String,
    /// The cluster's shared secret, if it has one.
    pub secret: Option<Secret>,
    /// How long to keep trying.
    pub connect_timeout: Duration,
    /// How often to send something; the server is counted gone after three intervals without a
    /// byte from it.
    pub heartbeat: Duration,
}

/// The connection's life: connect (retrying until `connect_timeout`), then submissions out and
/// results in until `stop` is cancelled or the server goes away.
pub(super) async fn drive(
    endpoint: Endpoint,
    table: Arc<ResultTable>,
    handoff: Arc<Handoff>,
    mut queue: mpsc::UnboundedReceiver<Call>,
    stop: CancellationToken,
    connected: std::sync::mpsc::Sender<Result<(), DispatchError>>,
) {
    let server = endpoint.server.clone();
    let Admitted { mut reader, write, .. } = match connect(&endpoint).await {
        Ok(conn) => conn,
        Err(cause) => {
            let error = DispatchError::Connect { server: server.clone(), cause };
            let reason = error.to_string();
            warn!(%server, %reason, "cannot reach the server");
            let _ = connected.send(Err(error));
            handoff.end(&reason);
            table.close(Outcome::Lost { reason });
            return;
        }
    };
    let _ = connected.send(Ok(()));
    info!(%server, "connected to the server");
    let (writer, written) = blitzen_net::spawn_writer::<FromDriver>(write);
    let mut declared = Declared::default();
    let mut ticks = tokio::time::interval(endpoint.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = (3 * endpoint.heartbeat).max(Duration::from_secs(1));
    let lost = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = writer.send(FromDriver::Bye);
                break None;
            }
            message = reader.next_alive::<ToDriver>(silence) => match message {
                Ok(Some(ToDriver::Heartbeat)) => {}
                Err(NetError::Silent(limit)) => {
                    break Some(format!(
                        "nothing arrived from the server for {limit:?} (a frozen server or a cut \
                         link) before the task finished"
                    ));
                }
                Ok(Some(ToDriver::Accepted { count })) => handoff.accepted(count),
                Ok(Some(ToDriver::Results(reports))) => {
                    let ids: Vec<DriverTaskId> = reports.iter().map(|r| r.id).collect();
                    debug!(count = ids.len(), "results received");
                    table.complete(reports);
                    let _ = writer.send(FromDriver::Ack(ids));
                }
                Ok(Some(ToDriver::Waiting { ids, reason })) => {
                    debug!(tasks = ids.len(), %reason, "tasks wait for an agent");
                    let seqs: Vec<u64> = ids.iter().map(|id| id.get()).collect();
                    table.note(&seqs, &reason);
                }
                Ok(Some(ToDriver::Stalled { tasks, waited_ms, reason })) => {
                    let waited = Duration::from_secs(waited_ms / 1000);
                    warn!(tasks, ?waited, %reason, "tasks are waiting: no connected agent can run them");
                }
                Ok(Some(ToDriver::ShuttingDown { reason })) => {
                    break Some(format!("the server shut down ({reason}) before the task finished"));
                }
                Ok(None) => break Some("the server closed the connection before the task finished".into()),
                Err(e) => break Some(format!("bad frame from the server: {e}")),
            },
            _ = ticks.tick() => {
                let _ = writer.send(FromDriver::Heartbeat);
            }
            Some(first) = queue.recv() => {
                let mut kinds = Vec::new();
                let mut tasks = vec![declared.submission(first, &mut kinds)];
                while tasks.len() < 65_536 {
                    match queue.try_recv() {
                        Ok(call) => tasks.push(declared.submission(call, &mut kinds)),
                        Err(_) => break,
                    }
                }
                let _ = writer.send(FromDriver::Submit { kinds, tasks });
            }
        }
    };
    handoff.end(lost.as_deref().unwrap_or("the dispatcher stopped"));
    if let Some(reason) = lost {
        warn!(%server, %reason, "connection to the server lost");
        table.close(Outcome::Lost { reason });
    }
    drop(writer);
    // Let the goodbye reach the server before the runtime goes away.
    let _ = tokio::time::timeout(Duration::from_secs(2), written).await;
}

/// Connects and shakes hands, retrying with backoff until the connect timeout; refusals are
/// final.
async fn connect(endpoint: &Endpoint) -> Result<Admitted<Welcome>, ConnectError> {
    let (server, secret, limit) =
        (endpoint.server.as_str(), endpoint.secret.as_ref(), endpoint.connect_timeout);
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(50);
    let name = format!(
        "{}[{}]",
        std::env::args().next().unwrap_or_else(|| "driver".into()),
        std::process::id()
    );
    let mut first = true;
    loop {
        let heartbeat_ms = endpoint.heartbeat.as_millis() as u64;
        let role = Role::Driver { name: name.clone(), heartbeat_ms };
        match blitzen_net::connect(server, role, secret, limit).await {
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

/// The kinds of task this connection has declared to the server, by number.
#[derive(Debug, Default)]
struct Declared {
    numbers: HashMap<(&'static str, u64), KindIndex>,
}

impl Declared {
    /// The call as a submission; a kind not declared yet is added to `kinds`, which goes out
    /// in the same frame.
    fn submission(&mut self, call: Call, kinds: &mut Vec<TaskKind>) -> Submission {
        let next = KindIndex::new(self.numbers.len() as u32);
        let kind = *self.numbers.entry((call.name, call.fingerprint)).or_insert_with(|| {
            kinds.push(TaskKind {
                name: call.name.to_string(),
                fingerprint: call.fingerprint,
                signature: call.signature.to_string(),
            });
            next
        });
        Submission {
            id: DriverTaskId::new(call.id),
            kind,
            args: call.args,
            timeout_ms: call.timeout.map(|t| t.as_millis() as u64),
            retries: call.retries,
            unrunnable_limit_ms: call.unrunnable_limit.map(|t| t.as_millis() as u64),
        }
    }
}
