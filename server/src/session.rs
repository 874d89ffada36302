//! One accepted connection: the handshake (with authentication when the server has secrets),
//! then frames in (turned into core events) and batches out (through a writer task the core
//! feeds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blitzen_common::auth::{NONCE_LEN, Side, nonce};
use blitzen_common::handshake::role_name;
use blitzen_common::net::{FramedReader, send_one, spawn_writer};
use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, Challenge, FromAgent, FromDriver, HANDSHAKE_FRAME_LEN, Hello,
    HelloReply, Proof, Refusal, Role, Welcome,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::{ConnId, Event};
use crate::{Secrets, ServerConfig};

/// Silences shorter than this never count an agent lost, whatever interval it announced.
const MIN_SILENCE: Duration = Duration::from_secs(1);

/// What every session needs from the server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub events: mpsc::UnboundedSender<Event>,
    pub config: ServerConfig,
    /// This run of the server (see [`Welcome::server_id`]).
    pub server_id: u64,
}

/// Serves one connection until it closes. Bad input is logged and ends this connection only.
#[tracing::instrument(name = "conn", skip_all, fields(id = conn, peer = %peer))]
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, conn: ConnId, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    let limit = shared.config.handshake_timeout;
    let hello =
        match tokio::time::timeout(limit, admit(&mut reader, &mut write, conn, &shared)).await {
            Ok(Some(hello)) => hello,
            Ok(None) => {
                let _ = write.shutdown().await;
                return;
            }
            Err(_) => return warn!(?limit, "handshake not completed in time; connection closed"),
        };
    reader.set_max(MAX_FRAME_LEN);
    let events = &shared.events;
    match hello.role {
        Role::Agent { host, workers, tasks, heartbeat_ms } => {
            let (tx, _) = spawn_writer(write);
            let close = CancellationToken::new();
            let joined =
                Event::AgentJoined { conn, host, workers, kinds: tasks, tx, close: close.clone() };
            let _ = events.send(joined);
            // Three intervals of silence (a frozen or cut-off agent) count it lost.
            let silence = (heartbeat_ms > 0)
                .then(|| (3 * Duration::from_millis(heartbeat_ms)).max(MIN_SILENCE));
            let reason = loop {
                let next = async {
                    match silence {
                        Some(limit) => tokio::time::timeout(limit, reader.next::<FromAgent>())
                            .await
                            .map_err(|_| limit),
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
                match message {
                    Ok(Some(FromAgent::Done(results))) => {
                        let _ = events.send(Event::AgentDone { conn, results, recovered: false });
                    }
                    Ok(Some(FromAgent::Recovered(results))) => {
                        let _ = events.send(Event::AgentDone { conn, results, recovered: true });
                    }
                    Ok(Some(FromAgent::Started(keys))) => {
                        let _ = events.send(Event::AgentStarted { conn, keys });
                    }
                    Ok(Some(FromAgent::Heartbeat)) => {}
                    Ok(None) => break "connection closed".to_string(),
                    Err(e) => {
                        warn!(error = %e, "bad frame from agent; connection closed");
                        break format!("bad frame: {e}");
                    }
                }
            };
            let _ = events.send(Event::AgentLeft { conn, reason });
        }
        Role::Driver { name } => {
            let (tx, _) = spawn_writer(write);
            let _ = events.send(Event::DriverJoined { conn, name, tx });
            let bye = loop {
                match reader.next::<FromDriver>().await {
                    Ok(Some(FromDriver::Submit { kinds, tasks })) => {
                        let _ = events.send(Event::Submit { conn, kinds, tasks });
                    }
                    Ok(Some(FromDriver::Ack(ids))) => {
                        let _ = events.send(Event::Ack { conn, ids });
                    }
                    Ok(Some(FromDriver::Bye)) => break true,
                    Ok(None) => break false,
                    Err(e) => {
                        warn!(error = %e, "bad frame from driver; connection closed");
                        break false;
                    }
                }
            };
            let _ = events.send(Event::DriverLeft { conn, bye });
        }
    }
    info!("connection ended");
}

/// The handshake: the peer's hello, the version check and, when the server has a secret for
/// the peer's role, the challenge and its answer. Returns the hello of an admitted peer; `None`
/// when the connection should close (the reason is logged, and told to the peer when useful).
async fn admit(
    reader: &mut FramedReader,
    write: &mut OwnedWriteHalf,
    conn: ConnId,
    shared: &Shared,
) -> Option<Hello> {
    let hello = match reader.next::<Hello>().await {
        Ok(Some(hello)) => hello,
        Ok(None) => {
            debug!("closed before the handshake");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "bad handshake; connection closed");
            return None;
        }
    };
    let role = role_name(&hello.role);
    if hello.version != CLUSTER_PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported: this server speaks version {}",
            hello.version, CLUSTER_PROTOCOL_VERSION
        );
        return refuse(write, role, reason).await;
    }
    if let Some(secret) = shared.config.secrets.for_role(&hello.role) {
        if hello.nonce.len() != NONCE_LEN {
            let reason = format!("authentication needs a {NONCE_LEN}-byte nonce in the hello");
            return refuse(write, role, reason).await;
        }
        let ours = match nonce() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot authenticate; connection closed");
                return None;
            }
        };
        let proof = secret.proof(Side::Server, role, &hello.nonce, &ours);
        let challenge = Challenge { nonce: Bytes::copy_from_slice(&ours), proof: proof.into() };
        send_one(write, &HelloReply::Challenge(challenge)).await.ok()?;
        let answer = match reader.next::<Proof>().await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                warn!(role, "wrong secret: the peer rejected this server's proof and left");
                return None;
            }
            Err(e) => {
                warn!(role, error = %e, "bad authentication answer; connection closed");
                return None;
            }
        };
        if answer.proof.is_empty() {
            let reason = format!("this server requires a secret and the {role} has none");
            return refuse(write, role, reason).await;
        }
        if !secret.verify(Side::Peer, role, &hello.nonce, &ours, &answer.proof) {
            let reason = format!("wrong secret: the {role}'s proof does not match this server's");
            return refuse(write, role, reason).await;
        }
        debug!(role, "authenticated");
    }
    let welcome = Welcome {
        version: CLUSTER_PROTOCOL_VERSION,
        connection: conn,
        task_limit: shared.config.task_limit as u64,
        server_id: shared.server_id,
    };
    send_one(write, &HelloReply::Welcome(welcome)).await.ok()?;
    Some(hello)
}

/// Tells the peer why it is refused, logs it, and says to close.
async fn refuse(write: &mut OwnedWriteHalf, role: &str, reason: String) -> Option<Hello> {
    warn!(role, %reason, "peer refused");
    let _ = send_one(write, &HelloReply::Refusal(Refusal { reason })).await;
    None
}

impl Secrets {
    /// The secret peers of this role must prove, if any.
    fn for_role(&self, role: &Role) -> Option<&blitzen_common::auth::Secret> {
        match role {
            Role::Agent { .. } => self.agents.as_ref(),
            Role::Driver { .. } => self.drivers.as_ref(),
        }
    }
}
