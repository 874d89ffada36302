use super::*;
use crate::secret::Secrets;
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
    let (server, peer) = shake_with(Serving::Plain(shared), Some(shared), PeerTls::default()).await;
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
    let e = admit(stream, &Secrets::default(), None, welcome(), limit).await.expect_err("silent");
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
