//! One accepted connection: the handshake ([`blitzen_net::admit`]), then one loop per role that
//! turns the peer's frames into core [`Event`]s; what goes back out is written by a writer task
//! the core feeds. Bad input is logged and ends this connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blitzen_net::{AdmitError, FramedReader, admit, spawn_writer};
use blitzen_protocol::cluster::{CLUSTER_PROTOCOL_VERSION, FromAgent, FromDriver, Role, Welcome};
use blitzen_protocol::ids::{ConnId, ServerId};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ServerConfig;
use crate::core::{Event, JoiningAgent};

/// Silences shorter than this never count an agent lost, whatever interval it announced.
const MIN_SILENCE: Duration = Duration::from_secs(1);

/// What every session needs from the server.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where sessions report to the core; the core stops once every sender is gone.
    pub events: mpsc::UnboundedSender<Event>,
    /// The server's settings (secrets, handshake limit, task limit).
    pub config: ServerConfig,
    /// This run of the server (see [`Welcome::server_id`]).
    pub server_id: ServerId,
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
    };
    let admitted = match admit(stream, &config.secrets, welcome, config.handshake_timeout).await {
        Ok(admitted) => admitted,
        Err(AdmitError::Closed) => return debug!("closed before the handshake"),
        Err(e) => return warn!(error = %e, "handshake failed; connection closed"),
    };
    let (reader, write) = (admitted.reader, admitted.write);
    match admitted.greeting.role {
        Role::Agent { host, workers, tasks, heartbeat_ms } => {
            let joining = JoiningAgent { host, workers, kinds: tasks };
            serve_agent(conn, reader, write, joining, heartbeat_ms, &shared.events).await;
        }
        Role::Driver { name } => serve_driver(conn, reader, write, name, &shared.events).await,
    }
    info!("connection ended");
}

/// An agent's connection: results, starts and heartbeats in; it is counted lost after three
/// heartbeat intervals without a frame.
async fn serve_agent(
    conn: ConnId,
    mut reader: FramedReader,
    write: OwnedWriteHalf,
    joining: JoiningAgent,
    heartbeat_ms: u64,
    events: &mpsc::UnboundedSender<Event>,
) {
    let (tx, _) = spawn_writer(write);
    let close = CancellationToken::new();
    let _ = events.send(Event::AgentJoined { conn, agent: joining, tx, close: close.clone() });
    // Three intervals of silence (a frozen or cut-off agent) count it lost.
    let silence =
        (heartbeat_ms > 0).then(|| (3 * Duration::from_millis(heartbeat_ms)).max(MIN_SILENCE));
    let reason = loop {
        let next = async {
            match silence {
                Some(limit) => {
                    tokio::time::timeout(limit, reader.next::<FromAgent>()).await.map_err(|_| limit)
                }
                None => Ok(reader.next::<FromAgent>().await),
            }
        };
        let message = tokio::select! {
            m = next => m,
            // The core found the agent breaking the protocol (and logged how).
            _ = close.cancelled() => break "closed by the server".to_string(),
        };
        let message = match message {
            Ok(m) => m,
            Err(limit) => {
                warn!(silent_for = ?limit, "agent missed its heartbeats; counted lost");
                break format!("no heartbeat for {limit:?}");
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
            Ok(Some(FromAgent::Heartbeat)) => continue,
            Ok(None) => break "connection closed".to_string(),
            Err(e) => {
                warn!(error = %e, "bad frame from agent; connection closed");
                break format!("bad frame: {e}");
            }
        };
        let _ = events.send(event);
    };
    let _ = events.send(Event::AgentLeft { conn, reason });
}

/// A driver's connection: submissions and acknowledgements in, until its goodbye.
async fn serve_driver(
    conn: ConnId,
    mut reader: FramedReader,
    write: OwnedWriteHalf,
    name: String,
    events: &mpsc::UnboundedSender<Event>,
) {
    let (tx, _) = spawn_writer(write);
    let _ = events.send(Event::DriverJoined { conn, name, tx });
    let bye = loop {
        let event = match reader.next::<FromDriver>().await {
            Ok(Some(FromDriver::Submit { kinds, tasks })) => Event::Submit { conn, kinds, tasks },
            Ok(Some(FromDriver::Ack(ids))) => Event::Ack { conn, ids },
            Ok(Some(FromDriver::Bye)) => break true,
            Ok(None) => break false,
            Err(e) => {
                warn!(error = %e, "bad frame from driver; connection closed");
                break false;
            }
        };
        let _ = events.send(event);
    };
    let _ = events.send(Event::DriverLeft { conn, bye });
}
