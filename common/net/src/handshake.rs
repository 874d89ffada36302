//! The handshake that opens every cluster connection: [`connect`]
//! for the agent or driver that connects, [`admit`] for the server that accepts.
//!
//! ```text
//! peer   → server   Preface { version, encrypt }          (in the clear)
//! server → peer     StartTls | Plain | Refusal { reason }
//!                   … a TLS 1.3 handshake, after StartTls: what follows is inside it …
//! peer   → server   Hello { version, role, nonce_p }
//! server → peer     Challenge { nonce_s, proof_s }        (only when the server has a secret)
//! peer   → server   Proof { proof_p }                     (empty: "I have no secret")
//! server → peer     Welcome, or Refusal { reason } and close
//! ```
//!
//! A peer encrypts when it has a secret (unless told `plaintext`); a server when it has
//! secrets and a TLS identity. When they disagree the server refuses in the clear, saying what
//! to change. The proofs are described in [`crate::secret`]; with TLS they cover the session's
//! keying material ([`crate::tls`]). Until a peer is admitted, frames are limited to
//! [`HANDSHAKE_FRAME_LEN`]; both halves raise the limit to [`MAX_FRAME_LEN`] once through.
//! Whoever gives up tells the other side why when that helps, and a peer that gives up waits
//! for the server to close, so that the server has logged the attempt before the peer reports it.
//!
//! This file holds the connecting side and what both share; `admit` the accepting side.

use std::io;
use std::time::Duration;

use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, HANDSHAKE_FRAME_LEN, Hello, HelloReply, Preface, PrefaceReply, Proof,
    Role, Welcome,
};
use blitzen_protocol::frame::{HEADER_LEN, decode_shared};
use blitzen_protocol::{DecodeError, FrameError};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::framed::{self, FramedReader, NetError, WriteSide, split, split_tcp};
use crate::secret::{Exchange, SECRET_ENV, Secret, Side, nonce};
use crate::tls::{self, Verify};
use crate::writer::send_one;

mod admit;

pub use admit::{AdmitError, admit};

/// An admitted connection, on either side: the frames in (limit raised), the write half, and
/// what the handshake established.
pub struct Admitted<M> {
    /// Reads the other side's messages.
    pub reader: FramedReader,
    /// The connection's write half, for a writer task.
    pub write: WriteSide,
    /// For a peer, the server's [`Welcome`]; for the server, the peer's [`Hello`].
    pub greeting: M,
    /// Whether the connection is encrypted (TLS 1.3).
    pub encrypted: bool,
    /// The key exchange its TLS session negotiated (`X25519MLKEM768`); `None` in the clear.
    pub key_exchange: Option<String>,
}

impl<M: std::fmt::Debug> std::fmt::Debug for Admitted<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("greeting", &self.greeting)
            .field("encrypted", &self.encrypted)
            .field("key_exchange", &self.key_exchange)
            .finish_non_exhaustive()
    }
}

/// How a peer secures its connections to the server.
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    /// Connect in the clear although there is a secret; the server must allow it
    /// (`--insecure-plaintext` on both sides).
    pub plaintext: bool,
    /// What to check of the server's certificate besides the binding of the proofs.
    pub verify: Verify,
}

impl PeerTls {
    /// From a command line's `--insecure-plaintext`, `--tls-pin` and `--tls-ca` (a pin wins
    /// over a CA; the parsers make them exclusive).
    pub fn from_flags(
        plaintext: bool,
        pin: Option<&str>,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, tls::TlsError> {
        let verify = match (pin, ca) {
            (Some(pin), _) => Verify::Pin(pin.parse()?),
            (None, Some(ca)) => Verify::ca_file(ca)?,
            (None, None) => Verify::Binding,
        };
        Ok(Self { plaintext, verify })
    }
}

/// The name of a role inside authentication proofs and messages.
pub fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Agent { .. } => "agent",
        Role::Driver { .. } => "driver",
        Role::Observer { .. } => "observer",
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
    /// The TLS handshake failed (a certificate that is not the pinned one or not from the CA,
    /// a server that is not a Blitzen server): retrying cannot help.
    #[error("TLS handshake with the server failed: {0}")]
    Tls(String),
    /// This side's TLS settings are unusable (a bad CA file, a host name a certificate
    /// cannot name).
    #[error(transparent)]
    TlsSetup(#[from] tls::TlsError),
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
                | ConnectError::Tls(_)
                | ConnectError::TlsSetup(_)
        )
    }
}

/// Connects to `server` (`host:port`) as `role` and shakes hands, all within `limit`; returns
/// the admitted connection with the server's [`Welcome`]. With a secret the connection is
/// encrypted, unless `tls.plaintext`.
pub async fn connect(
    server: &str,
    role: Role,
    secret: Option<&Secret>,
    tls: &PeerTls,
    limit: Duration,
) -> Result<Admitted<Welcome>, ConnectError> {
    crate::framed::check_address(server)
        .map_err(|reason| ConnectError::BadAddress { server: server.to_string(), reason })?;
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(server).await {
        Ok(addrs) => addrs.collect(),
        Err(source) => return Err(ConnectError::Resolve { server: server.to_string(), source }),
    };
    let stream = framed::connect(&addrs[..], server, limit).await?;
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::time::timeout(limit, greet(stream, host, role, secret, tls))
        .await
        .unwrap_or(Err(ConnectError::TimedOut(limit)))
}

async fn greet(
    mut stream: TcpStream,
    host: &str,
    role: Role,
    secret: Option<&Secret>,
    tls: &PeerTls,
) -> Result<Admitted<Welcome>, ConnectError> {
    let encrypt = secret.is_some() && !tls.plaintext;
    send_one(&mut stream, &Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt }).await?;
    let reply = match read_one::<PrefaceReply>(&mut stream).await {
        Ok(Some(reply)) => reply,
        Ok(None) => return Err(ConnectError::Closed),
        Err(e) => return Err(ConnectError::BadReply(e)),
    };
    let (read, mut write, binding, key_exchange) = match (reply, encrypt) {
        (PrefaceReply::StartTls, true) => {
            let (connector, name) = tls.verify.connector(host)?;
            let stream = (connector.connect(name, tls::buffered(stream)).await)
                .map_err(|e| tls_failure(&e))?;
            let binding = tls::binding(stream.get_ref().1)
                .map_err(|e| ConnectError::Tls(format!("no keying material: {e}")))?;
            let key_exchange = tls::key_exchange(stream.get_ref().1);
            let (read, write) = split(stream);
            (read, write, binding.to_vec(), key_exchange)
        }
        (PrefaceReply::Plain, false) => {
            let (read, write) = split_tcp(stream);
            (read, write, Vec::new(), None)
        }
        // The server neither authenticates nor encrypts: with a secret, we do not trust it.
        (PrefaceReply::Plain, true) => return Err(ConnectError::Unauthenticated),
        (PrefaceReply::StartTls, false) => {
            return Err(ConnectError::Refused(
                "the server wants to encrypt, but this side did not offer to".into(),
            ));
        }
        (PrefaceReply::Refusal(r), _) => {
            let mut rest = [0u8; 64];
            // Its close follows its refusal (logged first): wait for it.
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            return Err(ConnectError::Refused(r.reason));
        }
    };
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
        let exchange =
            Exchange { peer_nonce: &ours, server_nonce: &challenge.nonce, binding: &binding };
        if !secret.verify(Side::Server, role_name, &exchange, &challenge.proof) {
            // Leave without answering, and wait for the server to close its side, so that it
            // has logged the failed attempt before we return.
            let _ = write.shutdown().await;
            wait_for_close(&mut reader).await;
            return Err(ConnectError::WrongSecret);
        }
        let proof = secret.proof(Side::Peer, role_name, &exchange);
        send_one(&mut write, &Proof { proof: Bytes::from(proof) }).await?;
        reply = next_reply(&mut reader).await?;
    } else if secret.is_some() && matches!(reply, HelloReply::Welcome(_)) {
        return Err(ConnectError::Unauthenticated);
    }
    match reply {
        HelloReply::Welcome(welcome) => {
            reader.set_max(MAX_FRAME_LEN);
            Ok(Admitted { reader, write, greeting: welcome, encrypted: encrypt, key_exchange })
        }
        HelloReply::Refusal(r) => Err(ConnectError::Refused(r.reason)),
        HelloReply::Challenge(_) => Err(ConnectError::SecondChallenge),
    }
}

/// A failed TLS handshake in words: rustls's, with what the likely cause is.
fn tls_failure(e: &std::io::Error) -> ConnectError {
    // rustls words an error of our certificate check "unexpected error: …".
    let text = e.to_string().replace("unexpected error: ", "");
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return ConnectError::Closed;
    }
    if text.contains("invalid peer certificate") {
        return ConnectError::Tls(format!(
            "{text} (the server's certificate is not issued by a CA this side trusts, or does \
             not name the host it connects to)"
        ));
    }
    ConnectError::Tls(text)
}

/// Reads exactly one frame off a socket and nothing after it (the bytes that follow may be a
/// TLS handshake): `Ok(None)` if it closed first.
async fn read_one<M: DeserializeOwned>(stream: &mut TcpStream) -> Result<Option<M>, NetError> {
    let mut header = [0u8; HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e).into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > HANDSHAKE_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: HANDSHAKE_FRAME_LEN }.into());
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            FrameError::Truncated { have: HEADER_LEN, need: HEADER_LEN + len }
        }
        _ => FrameError::Io(e),
    })?;
    let message: Result<M, DecodeError> = decode_shared(&Bytes::from(body));
    Ok(Some(message?))
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

#[cfg(test)]
mod tests;
