//! One accepted connection: the handshake, then frames in (turned into core events) and
//! batches out (through a writer task the core feeds).

use std::net::SocketAddr;
use std::time::Duration;

use blitzen_common::net::{FramedReader, send_one, spawn_writer};
use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, FromAgent, FromDriver, HANDSHAKE_FRAME_LEN, Hello, HelloReply,
    Refusal, Role, Welcome,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::core::{ConnId, Event};

/// Serves one connection until it closes. Bad input is logged and ends this connection only.
#[tracing::instrument(name = "conn", skip_all, fields(id = conn, peer = %peer))]
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    handshake_timeout: Duration,
    task_limit: u64,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    let hello = match tokio::time::timeout(handshake_timeout, reader.next::<Hello>()).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return debug!("closed before the handshake"),
        Ok(Err(e)) => return warn!(error = %e, "bad handshake; connection closed"),
        Err(_) => return warn!(?handshake_timeout, "no handshake in time; connection closed"),
    };
    let reply = if hello.version != CLUSTER_PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported: this server speaks version {}",
            hello.version, CLUSTER_PROTOCOL_VERSION
        );
        warn!(%reason, "peer refused");
        HelloReply::Refusal(Refusal { reason })
    } else {
        HelloReply::Welcome(Welcome {
            version: CLUSTER_PROTOCOL_VERSION,
            connection: conn,
            task_limit,
        })
    };
    if send_one(&mut write, &reply).await.is_err() {
        return;
    }
    if matches!(reply, HelloReply::Refusal(_)) {
        let _ = write.shutdown().await;
        return;
    }
    reader.set_max(MAX_FRAME_LEN);
    match hello.role {
        Role::Agent { host, workers, tasks } => {
            let (tx, _) = spawn_writer(write);
            let _ = events.send(Event::AgentJoined { conn, host, workers, kinds: tasks, tx });
            let reason = loop {
                match reader.next::<FromAgent>().await {
                    Ok(Some(FromAgent::Done(results))) => {
                        let _ = events.send(Event::AgentDone { conn, results });
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
