//! The accepting side of the handshake: [`admit`], what the server runs on each connection.

use std::io;
use std::time::Duration;

use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, Challenge, HANDSHAKE_FRAME_LEN, Hello, HelloReply, Preface,
    PrefaceReply, Proof, Refusal, Welcome,
};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Admitted, read_one, role_name};
use crate::framed::{FramedReader, NetError, WriteSide, split, split_tcp};
use crate::secret::{Exchange, NONCE_LEN, Secrets, Side, nonce};
use crate::tls::{self, TlsAcceptor};
use crate::writer::send_one;

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
    /// The TLS handshake failed (the peer is not a Blitzen peer, or its bytes were altered).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
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

/// Shakes hands with a peer that connected: reads its preface, starts TLS when both sides
/// encrypt (`tls`: the server's side of TLS, when it encrypts), reads its hello, checks its
/// version and, when `secrets` has one for its role, has it prove it; all within `limit`. On
/// success sends `welcome` and returns the admitted connection with the peer's [`Hello`]; on
/// failure the failure is logged, the connection closed (the peer told why when useful), and the
/// error says what happened.
pub async fn admit(
    stream: TcpStream,
    secrets: &Secrets,
    tls: Option<&TlsAcceptor>,
    welcome: Welcome,
    limit: Duration,
) -> Result<Admitted<Hello>, AdmitError> {
    let outcome = tokio::time::timeout(limit, check(stream, secrets, tls, welcome))
        .await
        .unwrap_or(Err((AdmitError::TimedOut(limit), None)));
    match outcome {
        Ok(admitted) => Ok(admitted),
        Err((e, write)) => {
            // Logged before the close: a refused peer waits for the close before it reports,
            // so the server's line is always there first.
            match &e {
                AdmitError::Closed => tracing::debug!("closed before the handshake"),
                e => tracing::warn!(error = %e, "handshake failed; connection closed"),
            }
            if let Some(mut write) = write {
                let _ = write.shutdown().await;
            }
            Err(e)
        }
    }
}

/// A failed handshake, with the write half to close when there is one.
type Failed = (AdmitError, Option<WriteSide>);

async fn check(
    mut stream: TcpStream,
    secrets: &Secrets,
    tls: Option<&TlsAcceptor>,
    welcome: Welcome,
) -> Result<Admitted<Hello>, Failed> {
    let preface = match read_one::<Preface>(&mut stream).await {
        Ok(Some(preface)) => preface,
        Ok(None) => return Err((AdmitError::Closed, None)),
        Err(e) => return Err((AdmitError::BadHello(e), None)),
    };
    let refuse_plain = |reason: String| Refusal { reason };
    let refusal = if preface.version != CLUSTER_PROTOCOL_VERSION {
        Some(refuse_plain(format!(
            "protocol version {} is not supported: this server speaks version {}",
            preface.version, CLUSTER_PROTOCOL_VERSION
        )))
    } else {
        match (tls, preface.encrypt) {
            (Some(_), false) => Some(refuse_plain(
                "this server requires a shared secret and encrypts its connections (TLS): \
                 give this peer the cluster's secret (--secret-file or BLITZEN_SECRET), with \
                 which it encrypts by default (a peer with --insecure-plaintext cannot join)"
                    .into(),
            )),
            (None, true) if secrets.enabled() => Some(refuse_plain(
                "this server runs with --insecure-plaintext: its connections are not \
                 encrypted; give the peer --insecure-plaintext too, or (better) start the \
                 server without it"
                    .into(),
            )),
            _ => None,
        }
    };
    if let Some(refusal) = refusal {
        let reason = refusal.reason.clone();
        let _ = send_one(&mut stream, &PrefaceReply::Refusal(refusal)).await;
        let (_, write) = split_tcp(stream);
        return Err((AdmitError::Refused { role: "peer", reason }, Some(write)));
    }
    let (read, mut write, binding, key_exchange) = match tls {
        Some(acceptor) => {
            if let Err(e) = send_one(&mut stream, &PrefaceReply::StartTls).await {
                return Err((e.into(), None));
            }
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err((AdmitError::Tls("the peer closed the connection".into()), None));
                }
                Err(e) => {
                    let mut text = e.to_string();
                    if text.contains("received fatal alert") {
                        text.push_str(
                            " (the peer rejected this server's certificate: does it pin another \
                             fingerprint, or trust another CA?)",
                        );
                    }
                    return Err((AdmitError::Tls(text), None));
                }
            };
            let binding = match tls::binding(stream.get_ref().1) {
                Ok(binding) => binding.to_vec(),
                Err(e) => return Err((AdmitError::Tls(format!("no keying material: {e}")), None)),
            };
            let key_exchange = tls::key_exchange(stream.get_ref().1);
            let (read, write) = split(stream);
            (read, write, binding, key_exchange)
        }
        None => {
            if let Err(e) = send_one(&mut stream, &PrefaceReply::Plain).await {
                return Err((e.into(), None));
            }
            let (read, write) = split_tcp(stream);
            (read, write, Vec::new(), None)
        }
    };
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    match authenticate(&mut reader, &mut write, secrets, &binding, welcome).await {
        Ok(hello) => {
            reader.set_max(MAX_FRAME_LEN);
            let encrypted = tls.is_some();
            Ok(Admitted { reader, write, greeting: hello, encrypted, key_exchange })
        }
        Err(e) => Err((e, Some(write))),
    }
}

/// The hello, and the secret's challenge–response when the peer's role has a secret.
async fn authenticate(
    reader: &mut FramedReader,
    write: &mut WriteSide,
    secrets: &Secrets,
    binding: &[u8],
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
        let exchange = Exchange { peer_nonce: &hello.nonce, server_nonce: &ours, binding };
        let proof = secret.proof(Side::Server, role, &exchange);
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
        if !secret.verify(Side::Peer, role, &exchange, &answer.proof) {
            let reason = format!("wrong secret: the {role}'s proof does not match this server's");
            return Err(refuse(write, role, reason).await);
        }
        tracing::debug!(role, "authenticated");
    }
    send_one(write, &HelloReply::Welcome(welcome)).await?;
    Ok(hello)
}

/// Tells the peer why it is refused; the error to return.
async fn refuse(write: &mut WriteSide, role: &'static str, reason: String) -> AdmitError {
    let _ = send_one(write, &HelloReply::Refusal(Refusal { reason: reason.clone() })).await;
    AdmitError::Refused { role, reason }
}
