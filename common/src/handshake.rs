//! The connecting side of a cluster handshake, shared by agents and drivers: hello, then — when
//! the server has a secret — check its proof and send ours (see [`crate::auth`]).

use std::time::Duration;

use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, HANDSHAKE_FRAME_LEN, Hello, HelloReply, Proof, Role, Welcome,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::auth::{Secret, Side, nonce};
use crate::net::{FramedReader, send_one};

/// Why a handshake did not admit us.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or timed out: worth another attempt.
    #[error("{0}")]
    Connection(String),
    /// The server refused us, or we refused it (secrets differ, one side has none, another
    /// protocol version): retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

/// The name of a role inside authentication proofs.
pub fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Agent { .. } => "agent",
        Role::Driver { .. } => "driver",
    }
}

/// Shakes hands over `stream` as `role`, within `limit`; returns the admitted connection with
/// its frame limit raised.
pub async fn handshake(
    stream: TcpStream,
    role: Role,
    secret: Option<&Secret>,
    limit: Duration,
) -> Result<(FramedReader, OwnedWriteHalf, Welcome), HandshakeError> {
    tokio::time::timeout(limit, exchange(stream, role, secret)).await.unwrap_or_else(|_| {
        Err(HandshakeError::Connection(format!("no handshake reply within {limit:?}")))
    })
}

async fn exchange(
    stream: TcpStream,
    role: Role,
    secret: Option<&Secret>,
) -> Result<(FramedReader, OwnedWriteHalf, Welcome), HandshakeError> {
    let io = |e: std::io::Error| HandshakeError::Connection(e.to_string());
    let (read, mut write) = stream.into_split();
    let role_name = role_name(&role);
    let ours = nonce().map_err(io)?;
    let hello =
        Hello { version: CLUSTER_PROTOCOL_VERSION, role, nonce: Bytes::copy_from_slice(&ours) };
    send_one(&mut write, &hello).await.map_err(io)?;
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    let mut reply = next_reply(&mut reader).await?;
    if let HelloReply::Challenge(challenge) = &reply {
        let Some(secret) = secret else {
            // An empty proof tells the server why we give up; its refusal (awaited, so that
            // it has logged the attempt before we return) closes the exchange.
            let _ = send_one(&mut write, &Proof { proof: Bytes::new() }).await;
            let _ = reader.next::<HelloReply>().await;
            return Err(HandshakeError::Refused(format!(
                "the server requires a shared secret; give this {role_name} the cluster's \
                 secret (--secret-file or {})",
                crate::auth::SECRET_ENV
            )));
        };
        if !secret.verify(Side::Server, role_name, &ours, &challenge.nonce, &challenge.proof) {
            // Leave without answering, and wait for the server to close its side, so that it
            // has logged the failed attempt before we return.
            let _ = write.shutdown().await;
            let _ = reader.next::<HelloReply>().await;
            return Err(HandshakeError::Refused(
                "wrong secret: the server could not prove it knows this side's secret (the \
                 secrets differ, or this is not the server you meant)"
                    .into(),
            ));
        }
        let proof = secret.proof(Side::Peer, role_name, &ours, &challenge.nonce);
        send_one(&mut write, &Proof { proof: Bytes::from(proof) }).await.map_err(io)?;
        reply = next_reply(&mut reader).await?;
    } else if secret.is_some() && matches!(reply, HelloReply::Welcome(_)) {
        return Err(HandshakeError::Refused(
            "the server does not authenticate its peers, but this side has a secret: refusing \
             to trust it (start the server with the secret, or remove it here)"
                .into(),
        ));
    }
    match reply {
        HelloReply::Welcome(welcome) => {
            reader.set_max(MAX_FRAME_LEN);
            Ok((reader, write, welcome))
        }
        HelloReply::Refusal(r) => Err(HandshakeError::Refused(r.reason)),
        HelloReply::Challenge(_) => {
            Err(HandshakeError::Refused("the server sent a second challenge".into()))
        }
    }
}

async fn next_reply(reader: &mut FramedReader) -> Result<HelloReply, HandshakeError> {
    match reader.next::<HelloReply>().await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(HandshakeError::Connection(
            "the server closed the connection during the handshake".into(),
        )),
        Err(e) => Err(HandshakeError::Connection(format!("bad handshake reply: {e}"))),
    }
}
