//! One accepted connection: the handshake ([`blitzen_net::admit`]), then one loop per role that
//! turns the peer's frames into core [`Event`]s; what goes back out is written by a writer task
//! the core feeds. Bad input is logged and ends this connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blitzen_net::{FramedReader, NetError, admit, spawn_writer};
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, FromAgent, FromDriver, FromObserver, Role, ToAgent, ToDriver,
    ToObserver, Welcome,
};
use blitzen_protocol::ids::{ConnId, ServerId};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ServerConfig;
use crate::core::{Event, JoiningAgent};

/// Silences shorter than this never count a peer gone, whatever interval it announced.
const MIN_SILENCE: Duration = Duration::from_secs(1);

/// How long a peer that sends something every `heartbeat_ms` may stay silent — not one byte —
/// before it is counted gone: three intervals, at least [`MIN_SILENCE`]. `None` for 0 (never).
fn silence_limit(heartbeat_ms: u64) -> Option<Duration> {
    (heartbeat_ms > 0).then(|| (3 * Duration::from_millis(heartbeat_ms)).max(MIN_SILENCE))
}

/// Ticks every `heartbeat_ms` (never for 0), for the server's own heartbeats to a peer.
fn heartbeats(heartbeat_ms: u64) -> Option<tokio::time::Interval> {
    (heartbeat_ms > 0).then(|| {
        let period = Duration::from_millis(heartbeat_ms);
        // The first one an interval from now: the connection's first message is the core's.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    })
}

/// The next tick, or never.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What every session needs from the server.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where sessions report to the core; the core stops once every sender is gone.
    pub events: mpsc::UnboundedSender<Event>,
    /// The server's settings (secrets, handshake limit, task limit).
    pub config: ServerConfig,
    /// This run of the server (see [`Welcome::server_id`]).
    pub server_id: ServerId,
    /// This run of the server (see [`Welcome::run`]).
    pub run: ServerId,
    /// The server's side of TLS, when connections are encrypted.
    pub tls: Option<blitzen_net::tls::TlsAcceptor>,
    /// The writers of agents' and drivers' connections: a stopping server waits for them to
    /// have sent their goodbyes.
    pub writers: tokio_util::task::TaskTracker,
}

/// What a driver said in its hello.
struct JoiningDriver {
    name: String,
    session: String,
    attach: bool,
    heartbeat_ms: u64,
}

/// Serves one connection until it closes.
#[tracing::instrument(name = "conn", skip_all, fields(id = %conn, peer = %peer))]
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, conn: ConnId, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let config = &shared.config;
    let welcome = Welcome {
        version: CLUSTER_PROTOCOL_VERSION,
        connection: conn,
        task_limit: config.task_limit as u64,
        server_id: shared.server_id,
        run: shared.run,
    };
    let tls = shared.tls.as_ref();
    let limit = config.handshake_timeout;
    let admitted = match admit(stream, &config.secrets, tls, welcome, limit).await {
        Ok(admitted) => admitted,
        // `admit` has logged why.
        Err(_) => return,
    };
    let (reader, write) = (admitted.reader, admitted.write);
    match admitted.greeting.role {
        Role::Agent {
            host,
            workers,
            tasks,
            heartbeat_ms,
            agent_id,
            replaces,
            capacity,
            cache_size,
            ends_in_ms,
            allocation,
        } => {
            if let Some(Err(why)) = capacity.as_ref().map(|c| c.validate()) {
                warn!(%host, %why, "agent announced a capacity that makes no sense; connection closed");
                return;
            }
            if let Some(kind) = tasks.iter().find(|k| k.request.is_some() || k.label.is_some()) {
                warn!(%host, task = %kind.name, "agent announced a task with a request or a label; connection closed");
                return;
            }
            let joining = JoiningAgent {
                host,
                workers,
                kinds: tasks,
                id: agent_id,
                replaces,
                capacity,
                cache_size,
                ends_in: (ends_in_ms > 0).then(|| Duration::from_millis(ends_in_ms)),
                allocation,
            };
            serve_agent(conn, reader, write, joining, heartbeat_ms, &shared).await;
        }
        Role::Driver { name, session, attach, heartbeat_ms } => {
            let driver = JoiningDriver { name, session, attach, heartbeat_ms };
            serve_driver(conn, reader, write, driver, &shared).await
        }
        Role::Observer { name } => serve_observer(reader, write, &name, &shared.events).await,
    }
    info!("connection ended");
}

/// An agent's connection: results, starts and heartbeats in; it is counted lost after three
/// heartbeat intervals without a byte. The server heartbeats it at the same interval.
async fn serve_agent(
    conn: ConnId,
    mut reader: FramedReader,
    write: blitzen_net::WriteSide,
    joining: JoiningAgent,
    heartbeat_ms: u64,
    shared: &Shared,
) {
    let events = &shared.events;
    let (tx, writer) = spawn_writer(write);
    shared.writers.spawn(writer);
    let close = CancellationToken::new();
    // Weak: the writer closes when the core drops the connection's sender.
    let beat = tx.downgrade();
    let _ = events.send(Event::AgentJoined { conn, agent: joining, tx, close: close.clone() });
    let silence = silence_limit(heartbeat_ms);
    let mut ticks = heartbeats(heartbeat_ms);
    let reason = loop {
        let message = tokio::select! {
            m = reader.next_alive::<FromAgent>(silence) => m,
            // The core found the agent breaking the protocol (and logged how).
            _ = close.cancelled() => break "closed by the server".to_string(),
            _ = tick(&mut ticks) => {
                if let Some(tx) = beat.upgrade() {
                    let _ = tx.send(ToAgent::Heartbeat);
                }
                continue;
            }
        };
        let event = match message {
            Ok(Some(FromAgent::Done(results))) => {
                Event::AgentDone { conn, results, recovered: false }
            }
            Ok(Some(FromAgent::Recovered(results))) => {
                Event::AgentDone { conn, results, recovered: true }
            }
            Ok(Some(FromAgent::Started(keys))) => Event::AgentStarted { conn, keys },
            Ok(Some(FromAgent::Reattach(seqs))) => Event::AgentReattach { conn, seqs },
            Ok(Some(FromAgent::Workers(workers))) => Event::AgentWorkers { conn, workers },
            Ok(Some(FromAgent::Output(output))) => Event::AgentOutput { conn, output },
            Ok(Some(FromAgent::Heartbeat)) => Event::AgentHeard { conn },
            Ok(Some(FromAgent::Leaving { reason })) => Event::AgentLeaving { conn, reason },
            Ok(None) => break "connection closed".to_string(),
            Err(NetError::Silent(limit)) => {
                warn!(silent_for = ?limit, "agent missed its heartbeats: nothing arrived from it; counted lost");
                break format!("nothing arrived from it for {limit:?}");
            }
            Err(e) => {
                warn!(error = %e, "bad frame from agent; connection closed");
                break format!("bad frame: {e}");
            }
        };
        let _ = events.send(event);
    };
    let _ = events.send(Event::AgentLeft { conn, reason });
}

/// How long an observer's connection may stay silent between requests.
const OBSERVER_SILENCE: Duration = Duration::from_secs(300);

/// An observer's connection (`blitzen-server status`, `cancel`): each request is answered by
/// the core, in order, until the observer closes the connection.
async fn serve_observer(
    mut reader: FramedReader,
    write: blitzen_net::WriteSide,
    name: &str,
    events: &mpsc::UnboundedSender<Event>,
) {
    let (tx, _) = spawn_writer::<ToObserver>(write);
    info!(%name, "observer connected");
    loop {
        let request = match reader.next_alive::<FromObserver>(OBSERVER_SILENCE).await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "bad frame from observer; connection closed");
                break;
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if events.send(Event::Observe { request, reply }).is_err() {
            break;
        }
        let Ok(answer) = answer.await else { break };
        if tx.send(answer).is_err() {
            break;
        }
    }
}

/// A driver's connection: submissions, acknowledgements and heartbeats in, until its goodbye.
/// A driver silent for three of its heartbeat intervals is counted gone, as if disconnected:
/// its tasks go on and their results are kept. The server heartbeats it at the same interval.
async fn serve_driver(
    conn: ConnId,
    mut reader: FramedReader,
    write: blitzen_net::WriteSide,
    driver: JoiningDriver,
    shared: &Shared,
) {
    let events = &shared.events;
    let JoiningDriver { name, session, attach, heartbeat_ms } = driver;
    let (tx, writer) = spawn_writer(write);
    shared.writers.spawn(writer);
    // Weak: the writer closes when the core drops the connection's sender.
    let beat = tx.downgrade();
    let _ = events.send(Event::DriverJoined { conn, name, session, attach, tx });
    let silence = silence_limit(heartbeat_ms);
    let mut ticks = heartbeats(heartbeat_ms);
    let bye = loop {
        let message = tokio::select! {
            m = reader.next_alive::<FromDriver>(silence) => m,
            _ = tick(&mut ticks) => {
                if let Some(tx) = beat.upgrade() {
                    let _ = tx.send(ToDriver::Heartbeat);
                }
                continue;
            }
        };
        let event = match message {
            Ok(Some(FromDriver::Submit { kinds, tasks })) => Event::Submit { conn, kinds, tasks },
            Ok(Some(FromDriver::Ack(ids))) => Event::Ack { conn, ids },
            Ok(Some(FromDriver::Cancel(ids))) => Event::Cancel { conn, ids },
            Ok(Some(FromDriver::Share(piece))) => Event::Share { conn, piece },
            Ok(Some(FromDriver::Unshare(ids))) => Event::Unshare { conn, ids },
            Ok(Some(FromDriver::Heartbeat)) => continue,
            Ok(Some(FromDriver::Bye)) => break true,
            Ok(None) => break false,
            Err(NetError::Silent(limit)) => {
                warn!(silent_for = ?limit, "nothing arrived from the driver; counted disconnected");
                break false;
            }
            Err(e) => {
                warn!(error = %e, "bad frame from driver; connection closed");
                break false;
            }
        };
        let _ = events.send(event);
    };
    let _ = events.send(Event::DriverLeft { conn, bye });
}
