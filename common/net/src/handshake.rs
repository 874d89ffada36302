//! The handshake that opens every cluster connection, both halves in one place: [`connect`]
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

use std::io;
use std::time::Duration;

use blitzen_protocol::MAX_FRAME_LEN;
use blitzen_protocol::cluster::{
    CLUSTER_PROTOCOL_VERSION, Challenge, HANDSHAKE_FRAME_LEN, Hello, HelloReply, Preface,
    PrefaceReply, Proof, Refusal, Role, Welcome,
};
use blitzen_protocol::frame::{HEADER_LEN, decode_shared};
use blitzen_protocol::{DecodeError, FrameError};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::framed::{self, FramedReader, NetError, WriteSide, split, split_tcp};
use crate::secret::{Exchange, NONCE_LEN, SECRET_ENV, Secret, Secrets, Side, nonce};
use crate::tls::{self, TlsAcceptor, Verify};
use crate::writer::send_one;

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
}

impl<M: std::fmt::Debug> std::fmt::Debug for Admitted<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("greeting", &self.greeting)
            .field("encrypted", &self.encrypted)
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
    let (read, mut write, binding) = match (reply, encrypt) {
        (PrefaceReply::StartTls, true) => {
            let (connector, name) = tls.verify.connector(host)?;
            let stream = (connector.connect(name, tls::buffered(stream)).await)
                .map_err(|e| tls_failure(&e))?;
            let binding = tls::binding(stream.get_ref().1)
                .map_err(|e| ConnectError::Tls(format!("no keying material: {e}")))?;
            let (read, write) = split(stream);
            (read, write, binding.to_vec())
        }
        (PrefaceReply::Plain, false) => {
            let (read, write) = split_tcp(stream);
            (read, write, Vec::new())
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
            Ok(Admitted { reader, write, greeting: welcome, encrypted: encrypt })
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
    let (read, mut write, binding) = match tls {
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
            let (read, write) = split(stream);
            (read, write, binding)
        }
        None => {
            if let Err(e) = send_one(&mut stream, &PrefaceReply::Plain).await {
                return Err((e.into(), None));
            }
            let (read, write) = split_tcp(stream);
            (read, write, Vec::new())
        }
    };
    let mut reader = FramedReader::new(read, HANDSHAKE_FRAME_LEN);
    match authenticate(&mut reader, &mut write, secrets, &binding, welcome).await {
        Ok(hello) => {
            reader.set_max(MAX_FRAME_LEN);
            Ok(Admitted { reader, write, greeting: hello, encrypted: tls.is_some() })
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

    /// How the server of a test handshake runs.
    #[derive(Clone, Copy)]
    enum Serving {
        /// With this secret and TLS.
        Tls(&'static str),
        /// With this secret, in the clear (`--insecure-plaintext`).
        Plain(&'static str),
        /// Without a secret.
        Open,
    }

    /// One handshake over loopback: the server's result and the peer's.
    async fn shake_with(
        serving: Serving,
        peer: Option<&str>,
        tls: PeerTls,
    ) -> (Result<Admitted<Hello>, AdmitError>, Result<Admitted<Welcome>, ConnectError>) {
        let identity = crate::tls::Identity::generate().expect("identity");
        let (secrets, acceptor) = match serving {
            Serving::Tls(s) => (Secrets::both(secret(s)), Some(identity.acceptor().expect("tls"))),
            Serving::Plain(s) => (Secrets::both(secret(s)), None),
            Serving::Open => (Secrets::default(), None),
        };
        let peer = peer.map(secret);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            admit(stream, &secrets, acceptor.as_ref(), welcome(), Duration::from_secs(5)).await
        });
        let role = Role::Driver {
            name: "test".into(),
            session: String::new(),
            attach: false,
            heartbeat_ms: 0,
        };
        let connected = connect(&addr, role, peer.as_ref(), &tls, Duration::from_secs(5)).await;
        (accepting.await.expect("server task"), connected)
    }

    /// [`shake_with`] the defaults: TLS whenever the server has a secret.
    async fn shake(
        server: Option<&'static str>,
        peer: Option<&str>,
    ) -> (Result<Admitted<Hello>, AdmitError>, Result<Admitted<Welcome>, ConnectError>) {
        let serving = server.map_or(Serving::Open, Serving::Tls);
        shake_with(serving, peer, PeerTls::default()).await
    }

    #[tokio::test]
    async fn matching_secrets_admit_both_ways_encrypted() {
        let shared = Some("a shared secret of length");
        let (server, peer) = shake(shared, shared).await;
        let server = server.expect("admitted");
        assert_eq!(role_name(&server.greeting.role), "driver");
        let peer = peer.expect("admitted");
        assert_eq!(peer.greeting, welcome());
        assert!(server.encrypted && peer.encrypted, "TLS by default with a secret");
        let (server, peer) = shake(None, None).await;
        let (server, peer) = (server.expect("admitted"), peer.expect("admitted"));
        assert!(!server.encrypted && !peer.encrypted, "no secret on either side: in the clear");
        let plaintext = PeerTls { plaintext: true, ..PeerTls::default() };
        let (server, peer) =
            shake_with(Serving::Plain("a shared secret of length"), shared, plaintext).await;
        let (server, peer) = (server.expect("admitted"), peer.expect("admitted"));
        assert!(!server.encrypted && !peer.encrypted, "both turned encryption off");
    }

    #[tokio::test]
    async fn each_mismatch_is_named_on_both_sides() {
        let ours = Some("the server's own secret");
        let (server, peer) = shake(ours, Some("another secret entirely")).await;
        assert!(matches!(peer, Err(ConnectError::WrongSecret)), "{peer:?}");
        assert!(matches!(server, Err(AdmitError::ProofRejected { role: "driver" })), "{server:?}");

        let (server, peer) = shake(ours, None).await;
        let peer = peer.expect_err("refused").to_string();
        assert!(peer.contains("requires a shared secret") && peer.contains("TLS"), "{peer}");
        let server = server.expect_err("refused").to_string();
        assert!(server.contains("requires a shared secret"), "{server}");

        let (server, peer) = shake(None, Some("a secret the server lacks")).await;
        assert!(matches!(peer, Err(ConnectError::Unauthenticated)), "{peer:?}");
        assert!(peer.as_ref().is_err_and(ConnectError::is_refusal));
        // The peer walked away after the preface.
        assert!(matches!(server, Err(AdmitError::Closed)), "{server:?}");
    }

    #[tokio::test]
    async fn encryption_on_one_side_only_is_refused_saying_what_to_change() {
        let shared = "a shared secret of length";
        let plaintext = PeerTls { plaintext: true, ..PeerTls::default() };
        let (server, peer) = shake_with(Serving::Tls(shared), Some(shared), plaintext).await;
        let peer = peer.expect_err("refused");
        assert!(peer.is_refusal() && peer.to_string().contains("--insecure-plaintext"), "{peer}");
        assert!(server.is_err());
        let (server, peer) =
            shake_with(Serving::Plain(shared), Some(shared), PeerTls::default()).await;
        let peer = peer.expect_err("refused").to_string();
        assert!(peer.contains("runs with --insecure-plaintext"), "{peer}");
        assert!(server.expect_err("refused").to_string().contains("--insecure-plaintext"));
    }

    #[tokio::test]
    async fn a_pinned_certificate_is_checked() {
        let shared = "a shared secret of length";
        let pin = "00".repeat(32).parse().expect("a fingerprint");
        let pinned = PeerTls { verify: Verify::Pin(pin), ..PeerTls::default() };
        let (server, peer) = shake_with(Serving::Tls(shared), Some(shared), pinned).await;
        let peer = peer.expect_err("not the pinned certificate");
        assert!(peer.is_refusal() && peer.to_string().contains("not the pinned one"), "{peer}");
        let server = server.expect_err("failed").to_string();
        assert!(server.contains("TLS handshake failed"), "{server}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_an_unreachable_server_is_not_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move { TcpStream::connect(addr).await });
        let (stream, _) = listener.accept().await.expect("accept");
        let limit = Duration::from_millis(50);
        let e =
            admit(stream, &Secrets::default(), None, welcome(), limit).await.expect_err("silent");
        assert!(matches!(e, AdmitError::TimedOut(_)) && e.to_string().contains("in time"), "{e}");
        drop(silent);
        drop(listener);
        let role = Role::Driver {
            name: "test".into(),
            session: String::new(),
            attach: false,
            heartbeat_ms: 0,
        };
        let e = connect(&addr.to_string(), role, None, &PeerTls::default(), limit)
            .await
            .expect_err("nobody listens");
        assert!(!e.is_refusal(), "{e}");
    }
}
