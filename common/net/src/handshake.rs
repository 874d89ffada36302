//! The handshake that opens every cluster connection, both halves in one place: [`connect`]
//! for the agent or driver that connects, [`admit`] for the server that accepts.
//!
//! ```text
//! peer   → server   Hello { version, role, nonce_p }
//! server → peer     Challenge { nonce_s, proof_s }        (only when the server has a secret)
//! peer   → server   Proof { proof_p }                     (empty: "I have no secret")
//! server → peer     Welcome, or Refusal { reason } and close
//! ```
//!
//! The proofs are described in [`crate::secret`]. Until a peer is admitted, frames are limited
//! to [`HANDSHAKE_FRAME_LEN`]; both halves raise the limit to [`MAX_FRAME_LEN`] once through.
//! Whoever gives up tells the other side why when that helps, and a peer that gives up waits
//! for the server to close, so that the server has logged the attempt before the peer reports it.

use std::io;
use std::time::Duration;

use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, Challenge, HANDSHAKE_FRAME_LEN, Hello, HelloReply, Proof, Refusal,
    Role, Welcome,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::framed::{self, FramedReader, NetError, send_one};
use crate::secret::{NONCE_LEN, SECRET_ENV, Secret, Secrets, Side, nonce};

/// An admitted connection, on either side: the frames in (limit raised), the write half, and
/// what the handshake established.
#[derive(Debug)]
pub struct Admitted<M> {
    /// Reads the other side's messages.
    pub reader: FramedReader,
    /// The socket's write half, for a writer task.
    pub write: OwnedWriteHalf,
    /// For a peer, the server's [`Welcome`]; for the server, the peer's [`Hello`].
    pub greeting: M,
}

/// The name of a role inside authentication proofs and messages.
pub fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Agent { .. } => "agent",
        Role::Driver { .. } => "driver",
    }
}

// ----- the connecting side -----

/// Why connecting to a server did not admit us.
#[derive(thiserror::Error)]
pub enum ConnectError {
    /// The connection failed (refused, reset, unreachable, timed out): another attempt may
    /// succeed once the server is up.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server's name does not resolve to an address (a typo, or no DNS): the caller
    /// decides whether waiting can help.
    #[error("cannot resolve `{server}`: {source}")]
    Resolve {
        /// The name, `host:port`.
        server: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The address is not `host:port` with a port from 1 to 65535: retrying cannot help.
    #[error("`{server}` is not a usable server address: {reason}")]
    BadAddress {
        /// What was given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server did not complete the handshake in time: another attempt may succeed.
    #[error("no handshake reply within {0:?}")]
    TimedOut(Duration),
    /// The server closed the connection during the handshake: another attempt may succeed.
    #[error("the server closed the connection during the handshake")]
    Closed,
    /// The server's reply was not a valid handshake message: it may be another program.
    #[error("bad handshake reply: {0}")]
    BadReply(#[source] NetError),
    /// The server refused us (another protocol version, a wrong secret, none): retrying
    /// cannot help.
    #[error("{0}")]
    Refused(String),
    /// The server requires a secret and we have none: retrying cannot help.
    #[error(
        "the server requires a shared secret; give this {role} the cluster's secret \
         (--secret-file or {SECRET_ENV})"
    )]
    SecretRequired {
        /// Our role.
        role: &'static str,
    },
    /// The server's proof does not match our secret: retrying cannot help.
    #[error(
        "wrong secret: the server could not prove it knows this side's secret (the secrets \
         differ, or this is not the server you meant)"
    )]
    WrongSecret,
    /// We have a secret but the server does not authenticate: we do not trust it. Retrying
    /// cannot help.
    #[error(
        "the server does not authenticate its peers, but this side has a secret: refusing to \
         trust it (start the server with the secret, or remove it here)"
    )]
    Unauthenticated,
    /// The server broke the handshake (a second challenge): retrying cannot help.
    #[error("the server sent a second challenge")]
    SecondChallenge,
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ConnectError {
    /// Whether retrying cannot help: the server and this side disagree on version or secret.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused(_)
                | ConnectError::SecretRequired { .. }
                | ConnectError::WrongSecret
                | ConnectError::Unauthenticated
                | ConnectError::SecondChallenge
                | ConnectError::BadAddress { .. }
        )
    }
}

/// Connects to `server` (`host:port`) as `role` and shakes hands, all within `limit`; returns
/// the admitted connection with the server's [`Welcome`].
pub async fn connect(
    server: &str,
    role: Role,
    secret: Option<&Secret>,
    limit: Duration,
) -> Result<Admitted<Welcome>, ConnectError> {
    crate::framed::check_address(server)
        .map_err(|reason| ConnectError::BadAddress { server: server.to_string(), reason })?;
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(server).await {
        Ok(addrs) => addrs.collect(),
        Err(source) => return Err(ConnectError::Resolve { server: server.to_string(), source }),
    };
    let stream = framed::connect(&addrs[..], server, limit).await?;
    tokio::time::timeout(limit, greet(stream, role, secret))
        .await
        .unwrap_or(Err(ConnectError::TimedOut(limit)))
}

async fn greet(
    stream: TcpStream,
    role: Role,
    secret: Option<&Secret>,
) -> Result<Admitted<Welcome>, ConnectError> {
    let (read, mut write) = stream.into_split();
    let role_name = role_name(&role);
    let ours = nonce()?;
    let hello =
        Hello { version: CLUSTER_PROTOCOL_VERSION, role, nonce: Bytes::copy_from_slice(&ours) };
    send_one(&mut write, &hello).await?;
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    let mut reply = next_reply(&mut reader).await?;
    if let HelloReply::Challenge(challenge) = &reply {
        let Some(secret) = secret else {
            // An empty proof tells the server why we give up; its refusal (awaited, so that
            // it has logged the attempt before we return) closes the exchange.
            let _ = send_one(&mut write, &Proof { proof: Bytes::new() }).await;
            wait_for_close(&mut reader).await;
            return Err(ConnectError::SecretRequired { role: role_name });
        };
        if !secret.verify(Side::Server, role_name, &ours, &challenge.nonce, &challenge.proof) {
            // Leave without answering, and wait for the server to close its side, so that it
            // has logged the failed attempt before we return.
            let _ = write.shutdown().await;
            wait_for_close(&mut reader).await;
            return Err(ConnectError::WrongSecret);
        }
        let proof = secret.proof(Side::Peer, role_name, &ours, &challenge.nonce);
        send_one(&mut write, &Proof { proof: Bytes::from(proof) }).await?;
        reply = next_reply(&mut reader).await?;
    } else if secret.is_some() && matches!(reply, HelloReply::Welcome(_)) {
        return Err(ConnectError::Unauthenticated);
    }
    match reply {
        HelloReply::Welcome(welcome) => {
            reader.set_max(MAX_FRAME_LEN);
            Ok(Admitted { reader, write, greeting: welcome })
        }
        HelloReply::Refusal(r) => Err(ConnectError::Refused(r.reason)),
        HelloReply::Challenge(_) => Err(ConnectError::SecondChallenge),
    }
}

/// Reads until the server closes the connection (its refusal included): it logs why before it
/// closes, so a peer that reports the failure after this never races the server's log.
async fn wait_for_close(reader: &mut FramedReader) {
    while let Ok(Some(_)) = reader.next::<HelloReply>().await {}
}

async fn next_reply(reader: &mut FramedReader) -> Result<HelloReply, ConnectError> {
    match reader.next::<HelloReply>().await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(ConnectError::Closed),
        Err(e) => Err(ConnectError::BadReply(e)),
    }
}

// ----- the accepting side -----

/// Why the server did not admit a connection. Every case but [`AdmitError::Closed`] is worth a
/// warning in the server's log; the peer was told the reason when that helps it.
#[derive(thiserror::Error)]
pub enum AdmitError {
    /// The peer closed the connection before saying anything (a port scan, a health check).
    #[error("closed before the handshake")]
    Closed,
    /// The first frame was not a hello: the peer speaks another protocol.
    #[error("bad handshake: {0}")]
    BadHello(#[source] NetError),
    /// The peer was refused, and told why.
    #[error("{role} refused: {reason}")]
    Refused {
        /// Its role.
        role: &'static str,
        /// What it was told.
        reason: String,
    },
    /// The peer rejected the server's proof and left: it has another secret.
    #[error("wrong secret: the {role} rejected this server's proof and left")]
    ProofRejected {
        /// Its role.
        role: &'static str,
    },
    /// The peer's answer to the challenge was not a valid proof message.
    #[error("bad authentication answer from the {role}: {source}")]
    BadProof {
        /// Its role.
        role: &'static str,
        /// What was wrong.
        source: NetError,
    },
    /// The peer did not complete the handshake in time.
    #[error("handshake not completed in time ({0:?})")]
    TimedOut(Duration),
    /// The connection or the system failed (a write error, no randomness for a nonce).
    #[error("handshake failed: {0}")]
    Io(#[from] io::Error),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for AdmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Shakes hands with a peer that connected: reads its hello, checks its version and, when
/// `secrets` has one for its role, has it prove it; all within `limit`. On success sends
/// `welcome` and returns the admitted connection with the peer's [`Hello`]; on failure the
/// failure is logged, the connection closed (the peer told why when useful), and the error says
/// what happened.
pub async fn admit(
    stream: TcpStream,
    secrets: &Secrets,
    welcome: Welcome,
    limit: Duration,
) -> Result<Admitted<Hello>, AdmitError> {
    let (read, mut write) = stream.into_split();
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    let outcome = tokio::time::timeout(limit, check(&mut reader, &mut write, secrets, welcome))
        .await
        .unwrap_or(Err(AdmitError::TimedOut(limit)));
    match outcome {
        Ok(hello) => {
            reader.set_max(MAX_FRAME_LEN);
            Ok(Admitted { reader, write, greeting: hello })
        }
        Err(e) => {
            // Logged before the close: a refused peer waits for the close before it reports,
            // so the server's line is always there first.
            match &e {
                AdmitError::Closed => tracing::debug!("closed before the handshake"),
                e => tracing::warn!(error = %e, "handshake failed; connection closed"),
            }
            let _ = write.shutdown().await;
            Err(e)
        }
    }
}

async fn check(
    reader: &mut FramedReader,
    write: &mut OwnedWriteHalf,
    secrets: &Secrets,
    welcome: Welcome,
) -> Result<Hello, AdmitError> {
    let hello = match reader.next::<Hello>().await {
        Ok(Some(hello)) => hello,
        Ok(None) => return Err(AdmitError::Closed),
        Err(e) => return Err(AdmitError::BadHello(e)),
    };
    let role = role_name(&hello.role);
    if hello.version != CLUSTER_PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported: this server speaks version {}",
            hello.version, CLUSTER_PROTOCOL_VERSION
        );
        return Err(refuse(write, role, reason).await);
    }
    if let Some(secret) = secrets.for_role(&hello.role) {
        if hello.nonce.len() != NONCE_LEN {
            let reason = format!("authentication needs a {NONCE_LEN}-byte nonce in the hello");
            return Err(refuse(write, role, reason).await);
        }
        let ours = nonce()?;
        let proof = secret.proof(Side::Server, role, &hello.nonce, &ours);
        let challenge = Challenge { nonce: Bytes::copy_from_slice(&ours), proof: proof.into() };
        send_one(write, &HelloReply::Challenge(challenge)).await?;
        let answer = match reader.next::<Proof>().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(AdmitError::ProofRejected { role }),
            Err(source) => return Err(AdmitError::BadProof { role, source }),
        };
        if answer.proof.is_empty() {
            let reason = format!("this server requires a secret and the {role} has none");
            return Err(refuse(write, role, reason).await);
        }
        if !secret.verify(Side::Peer, role, &hello.nonce, &ours, &answer.proof) {
            let reason = format!("wrong secret: the {role}'s proof does not match this server's");
            return Err(refuse(write, role, reason).await);
        }
        tracing::debug!(role, "authenticated");
    }
    send_one(write, &HelloReply::Welcome(welcome)).await?;
    Ok(hello)
}

/// Tells the peer why it is refused; the error to return.
async fn refuse(write: &mut OwnedWriteHalf, role: &'static str, reason: String) -> AdmitError {
    let _ = send_one(write, &HelloReply::Refusal(Refusal { reason: reason.clone() })).await;
    AdmitError::Refused { role, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::ids::{ConnId, ServerId};
    use tokio::net::TcpListener;

    fn welcome() -> Welcome {
        Welcome {
            version: CLUSTER_PROTOCOL_VERSION,
            connection: ConnId::new(1),
            task_limit: 10,
            server_id: ServerId::new(7),
            run: ServerId::new(8),
        }
    }

    fn secret(text: &str) -> Secret {
        Secret::new(text, "test").expect("long enough")
    }

    /// One handshake over loopback, each side with its secret or none: the server's result
    /// and the peer's.
    async fn shake(
        server: Option<&str>,
        peer: Option<&str>,
    ) -> (Result<Admitted<Hello>, AdmitError>, Result<Admitted<Welcome>, ConnectError>) {
        let server = server.map(|s| Secrets::both(secret(s))).unwrap_or_default();
        let peer = peer.map(secret);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            admit(stream, &server, welcome(), Duration::from_secs(5)).await
        });
        let role = Role::Driver {
            name: "test".into(),
            session: String::new(),
            attach: false,
            heartbeat_ms: 0,
        };
        let connected = connect(&addr, role, peer.as_ref(), Duration::from_secs(5)).await;
        (accepting.await.expect("server task"), connected)
    }

    #[tokio::test]
    async fn matching_secrets_admit_both_ways() {
        let shared = Some("a shared secret of length");
        let (server, peer) = shake(shared, shared).await;
        let hello = server.expect("admitted").greeting;
        assert_eq!(role_name(&hello.role), "driver");
        assert_eq!(peer.expect("admitted").greeting, welcome());
        let (server, peer) = shake(None, None).await;
        assert!(server.is_ok() && peer.is_ok(), "no secret on either side");
    }

    #[tokio::test]
    async fn each_mismatch_is_named_on_both_sides() {
        let ours = Some("the server's own secret");
        let (server, peer) = shake(ours, Some("another secret entirely")).await;
        assert!(matches!(peer, Err(ConnectError::WrongSecret)), "{peer:?}");
        assert!(matches!(server, Err(AdmitError::ProofRejected { role: "driver" })), "{server:?}");

        let (server, peer) = shake(ours, None).await;
        assert!(matches!(peer, Err(ConnectError::SecretRequired { role: "driver" })), "{peer:?}");
        let server = server.expect_err("refused").to_string();
        assert!(server.contains("has none"), "{server}");

        let (server, peer) = shake(None, Some("a secret the server lacks")).await;
        assert!(matches!(peer, Err(ConnectError::Unauthenticated)), "{peer:?}");
        assert!(peer.as_ref().is_err_and(ConnectError::is_refusal));
        // The server admitted it; the peer walked away.
        assert!(server.is_ok());
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_an_unreachable_server_is_not_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move { TcpStream::connect(addr).await });
        let (stream, _) = listener.accept().await.expect("accept");
        let limit = Duration::from_millis(50);
        let e = admit(stream, &Secrets::default(), welcome(), limit).await.expect_err("silent");
        assert!(matches!(e, AdmitError::TimedOut(_)) && e.to_string().contains("in time"), "{e}");
        drop(silent);
        drop(listener);
        let role = Role::Driver {
            name: "test".into(),
            session: String::new(),
            attach: false,
            heartbeat_ms: 0,
        };
        let e = connect(&addr.to_string(), role, None, limit).await.expect_err("nobody listens");
        assert!(!e.is_refusal(), "{e}");
    }
}
