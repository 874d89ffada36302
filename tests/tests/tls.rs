//! End-to-end tests of encrypted cluster connections, against the real `blitzen-server` and
//! `blitzen-client` binaries on 127.0.0.1: an eavesdropper on a link sees nothing of a task, an
//! attacker who flips a byte only breaks a connection (which heals, the task intact), a man in
//! the middle with a certificate of his own is refused by both sides, and hostile input before
//! and after the TLS handshake is contained.

use std::time::Duration;

use blitzen::distributed::DistributedDispatcher;
use blitzen::{Fetch, TaskError, echo};
use blitzen_protocol::cluster::{CLUSTER_PROTOCOL_VERSION, Preface, PrefaceReply};
use blitzen_protocol::frame::encode;
use blitzen_tests::cluster::{ServerProcess, TempFile, driver, start_agent_with, start_server};
use blitzen_tests::proxy::{Direction, Proxy};
use blitzen_tests::trial;
use blitzen_tests::{check, fail, poke};
use bytes::BytesMut;
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

const SECRET: &[u8] = b"the cluster's secret for the TLS tests";

/// Appears in a task's argument and result, in a session's name and in an agent's name.
const MARKER: &str = "blitzen-marker-7f3a91";

fn secret_file() -> Result<TempFile, Failed> {
    TempFile::new("secret", SECRET).map_err(fail)
}

/// A server with the secret, and any further flags.
fn secured_server(secret: &TempFile, extra: &[&str]) -> Result<ServerProcess, Failed> {
    let mut args = vec!["--secret-file", secret.arg()];
    args.extend_from_slice(extra);
    start_server(&args).map_err(fail)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    contains_bytes(haystack, needle.as_bytes())
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs one task carrying the marker through proxies on the agent's and the driver's links and
/// returns what each proxy saw. `plaintext`: every side turns encryption off.
fn record_a_task(plaintext: bool) -> Result<Vec<(&'static str, Vec<u8>)>, Failed> {
    let secret = secret_file()?;
    let off: &[&str] = if plaintext { &["--insecure-plaintext"] } else { &[] };
    let server = secured_server(&secret, off)?;
    let agent_link = Proxy::start(&server.addr).map_err(fail)?;
    let driver_link = Proxy::start(&server.addr).map_err(fail)?;
    let mut agent_args = vec!["--secret-file", secret.arg()];
    agent_args.extend_from_slice(off);
    let name = format!("{MARKER}-host");
    let _agent = start_agent_with(&agent_link.addr, 1, &name, &agent_args).map_err(fail)?;
    let d = driver(&driver_link.addr)
        .with_secret_file(&secret.path)
        .map_err(fail)?
        .with_session(format!("{MARKER}-session"))
        .insecure_plaintext(plaintext);
    let argument = format!("{MARKER}-argument");
    let id = d.run(echo::<String>(), argument.clone());
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(argument)], format!("{r:?}"))?;
    d.shutdown();
    Ok(vec![("agent", agent_link.recorded()), ("driver", driver_link.recorded())])
}

/// An eavesdropper on the links between the server and its agent and driver sees neither the
/// task's argument nor its result, nor the session's or the agent's name. With encryption
/// turned off on every side the same recording shows them (so the check can fail).
fn nothing_travels_in_the_clear() -> Result<(), Failed> {
    for (link, bytes) in record_a_task(false)? {
        check(bytes.len() > 1000, format!("the {link} link carried {} bytes", bytes.len()))?;
        check(!contains(&bytes, MARKER), format!("the marker crossed the {link} link in clear"))?;
    }
    for (link, bytes) in record_a_task(true)? {
        check(contains(&bytes, MARKER), format!("unencrypted, the {link} link shows the marker"))?;
    }
    Ok(())
}

/// Every connection's key exchange is the post-quantum hybrid X25519MLKEM768: on both links the
/// server's hello chooses it (its key share: group 0x11EC, a 1,120-byte key), where plain X25519
/// would show group 0x001D with 32 bytes.
fn connections_agree_on_a_post_quantum_key_exchange() -> Result<(), Failed> {
    // The key_share extension (0x0033) of a ServerHello: 1,124 bytes, group 0x11EC, 1,120 bytes.
    const HYBRID_SHARE: [u8; 8] = [0x00, 0x33, 0x04, 0x64, 0x11, 0xEC, 0x04, 0x60];
    const X25519_SHARE: [u8; 8] = [0x00, 0x33, 0x00, 0x24, 0x00, 0x1D, 0x00, 0x20];
    for (link, bytes) in record_a_task(false)? {
        check(
            contains_bytes(&bytes, &HYBRID_SHARE),
            format!("the {link} link: no hybrid key share"),
        )?;
        check(!contains_bytes(&bytes, &X25519_SHARE), format!("the {link} link: plain X25519"))?;
    }
    Ok(())
}

/// A byte flipped on the way from the server to an agent, or from a driver to the server,
/// fails the TLS record's authentication: the connection is closed with a logged error, and the
/// task runs once the connection is back — with its own argument, never the altered bytes.
fn a_tampered_byte_breaks_only_the_connection() -> Result<(), Failed> {
    let secret = secret_file()?;
    let server = secured_server(&secret, &[])?;
    let agent_link = Proxy::start(&server.addr).map_err(fail)?;
    let driver_link = Proxy::start(&server.addr).map_err(fail)?;
    let agent_args = ["--secret-file", secret.arg()];
    let agent = start_agent_with(&agent_link.addr, 1, "tampered", &agent_args).map_err(fail)?;
    let d = driver(&driver_link.addr).with_secret_file(&secret.path).map_err(fail)?;
    let warm = d.run(echo::<String>(), "warm".to_string());
    let r = d.get_results_with(&[warm], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok("warm".to_string())], format!("{r:?}"))?;
    let says = agent.wait_for_log("encrypted=true key_exchange=X25519MLKEM768", 1, WAIT);
    check(says, format!("the agent names its key exchange:\n{}", agent.log_text()))?;

    // The assignment to the agent is altered.
    agent_link.tamper(Direction::Down);
    let id = d.run(echo::<String>(), MARKER.to_string());
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(MARKER.to_string())], format!("the task ran intact: {r:?}"))?;
    let log = agent.log_text();
    check(log.contains("bad frame from the server"), format!("the agent says why:\n{log}"))?;
    let log = server.process.log_text();
    check(log.contains("agent disconnected"), format!("the server saw it go:\n{log}"))?;

    // The driver's submission is altered.
    driver_link.tamper(Direction::Up);
    let id = d.run(echo::<String>(), format!("{MARKER}-again"));
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(format!("{MARKER}-again"))], format!("the task ran intact: {r:?}"))?;
    let log = server.process.log_text();
    check(log.contains("bad frame from driver"), format!("the server says why:\n{log}"))?;
    // Thrown out, the driver reconnected: the server sent again only what it was owed then.
    let owed = blitzen_tests::log_sum(&log, "driver reconnected to its session", "owed");
    let duplicates = d.stats().duplicates;
    check(duplicates <= owed, format!("{duplicates} results came twice, {owed} were owed"))
}

/// A man in the middle: terminates TLS from the peer with a certificate of its own, opens TLS to
/// the server, and forwards what it decrypts — everything a proxy without the secret can do.
struct Mitm {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mitm {
    fn start(upstream: &str) -> Result<Self, Failed> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?.to_string();
        let upstream = upstream.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            tokio::spawn(intercept(client, upstream.clone()));
                        }
                    }
                }
            });
        });
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One intercepted connection: the clear preface passed on, then TLS on each side, then the
/// decrypted bytes copied both ways.
async fn intercept(mut client: tokio::net::TcpStream, upstream: String) {
    use blitzen_net::tls::{Identity, Verify};
    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
    if pass_frame(&mut client, &mut server).await.is_err()
        || pass_frame(&mut server, &mut client).await.is_err()
    {
        return;
    }
    let Ok(identity) = Identity::generate() else { return };
    let Ok(acceptor) = identity.acceptor() else { return };
    let Ok((connector, name)) = Verify::Binding.connector("blitzen") else { return };
    let (Ok(mut client), Ok(mut server)) =
        tokio::join!(acceptor.accept(client), connector.connect(name, server))
    else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Copies one length-prefixed frame from `from` to `to`.
async fn pass_frame(
    from: &mut tokio::net::TcpStream,
    to: &mut tokio::net::TcpStream,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut header = [0u8; 4];
    from.read_exact(&mut header).await?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    from.read_exact(&mut body).await?;
    to.write_all(&header).await?;
    to.write_all(&body).await
}

/// The man in the middle completes TLS with both sides, but the secret's proofs are bound to
/// each TLS session: the peer finds the server's proof wrong and leaves, the server logs that
/// its proof was rejected, and an agent stops with the reason.
fn a_man_in_the_middle_is_refused_on_both_sides() -> Result<(), Failed> {
    let secret = secret_file()?;
    let server = secured_server(&secret, &[])?;
    let mitm = Mitm::start(&server.addr)?;
    let d = driver(&mitm.addr).with_secret_file(&secret.path).map_err(fail)?;
    let e = match d.connect() {
        Ok(()) => return Err("admitted through a man in the middle".into()),
        Err(e) => e.to_string(),
    };
    check(e.contains("wrong secret"), format!("the driver refuses: {e}"))?;
    let found = server.process.wait_for_log("rejected this server's proof", 1, WAIT);
    check(found, format!("the server refuses:\n{}", server.process.log_text()))?;
    let agent_args = ["--secret-file", secret.arg()];
    let mut agent = start_agent_with(&mitm.addr, 1, "fooled", &agent_args).map_err(fail)?;
    let status = agent.wait_exit(WAIT).map_err(fail)?;
    check(status.is_some_and(|s| !s.success()), format!("the agent stops: {status:?}"))?;
    let log = agent.log_text();
    check(log.contains("wrong secret"), format!("the agent says why:\n{log}"))
}

/// One frame: the length prefix and the MessagePack of `msg`.
fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).expect("encodes");
    buf.to_vec()
}

/// Completes the preface and a TLS handshake as a peer would, sends `bytes` inside TLS, and
/// returns what the server answers before closing.
async fn poke_tls(addr: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(&frame(&Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt: true })).await?;
    let mut reply = vec![0u8; frame(&PrefaceReply::StartTls).len()];
    tcp.read_exact(&mut reply).await?;
    let (connector, name) =
        blitzen_net::tls::Verify::Binding.connector("blitzen").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(bytes).await?;
    tls.flush().await?;
    // Refused: closed (a TLS close, EOF or a reset) well before 20 s, never just silent.
    let mut rest = Vec::new();
    let limit = Duration::from_secs(20);
    match tokio::time::timeout(limit, tls.read_to_end(&mut rest)).await {
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the connection was not closed within {limit:?}"),
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(rest),
        // A TLS peer that closes without a close_notify.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(rest),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) => Ok(rest),
    }
}

/// Garbage before the TLS handshake, in place of it, and inside it: each connection is closed
/// with a logged error while a driver and an agent keep working.
fn hostile_input_before_and_after_the_tls_handshake() -> Result<(), Failed> {
    let secret = secret_file()?;
    let server = secured_server(&secret, &["--handshake-timeout", "2"])?;
    let agent_args = ["--secret-file", secret.arg()];
    let _agent = start_agent_with(&server.addr, 1, "worker", &agent_args).map_err(fail)?;
    let d = driver(&server.addr).with_secret_file(&secret.path).map_err(fail)?;
    let before: Vec<_> = (0..100u64).map(|i| d.run(echo::<u64>(), i)).collect();

    // The corpus of faults.rs, before TLS (in place of the preface) and inside it (in place of
    // the hello): each connection is closed without an answer.
    let mut corpus = blitzen_tests::hostile_bytes();
    corpus.extend([
        ("truncated frame", frame(&"a hello cut short")[..6].to_vec()),
        ("wrong shape", [frame(&42u64), frame(&"not a hello")].concat()),
    ]);
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    for (what, bytes) in &corpus {
        let answer = poke(&server.addr, bytes, false).map_err(|e| fail(format!("{what}: {e}")))?;
        check(answer.is_empty(), format!("{what} before TLS: answered {} bytes", answer.len()))?;
        let inside = runtime
            .block_on(poke_tls(&server.addr, bytes))
            .map_err(|e| fail(format!("{what} inside TLS: {e}")))?;
        check(inside.is_empty(), format!("{what} inside TLS: answered {} bytes", inside.len()))?;
    }
    let clear = frame(&Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt: false });
    let answer = poke(&server.addr, &clear, false).map_err(fail)?;
    let reply: PrefaceReply =
        blitzen_protocol::frame::decode(answer.get(4..).unwrap_or_default()).map_err(fail)?;
    let refused =
        matches!(&reply, PrefaceReply::Refusal(r) if r.reason.contains("requires a shared secret"));
    check(refused, format!("a peer in the clear is told: {reply:?}"))?;
    let encrypt = frame(&Preface { version: CLUSTER_PROTOCOL_VERSION, encrypt: true });
    let garbage_for_tls = [encrypt.clone(), vec![0x42; 600]].concat();
    let answer = poke(&server.addr, &garbage_for_tls, false).map_err(fail)?;
    let start_tls = frame(&PrefaceReply::StartTls);
    check(answer.starts_with(&start_tls), "TLS was offered before the garbage")?;
    let found = server.process.wait_for_log("TLS handshake failed", 1, WAIT);
    check(found, format!("garbage instead of TLS is logged:\n{}", server.process.log_text()))?;

    let found = server.process.wait_for_log("bad handshake", 1, WAIT);
    check(found, format!("garbage inside TLS is logged:\n{}", server.process.log_text()))?;

    let after: Vec<_> = (100..200u64).map(|i| d.run(echo::<u64>(), i)).collect();
    let all: Vec<_> = before.into_iter().chain(after).collect();
    let r = d.get_results_with(&all, Fetch::default().within(WAIT)).map_err(fail)?;
    let expected: Vec<Result<u64, TaskError>> = (0..200).map(Ok).collect();
    check(r == expected, "the driver was served throughout")
}

/// The certificate fingerprint a server logged at start.
fn fingerprint_of(server: &ServerProcess) -> Result<String, Failed> {
    let log = server.process.log_text();
    let fingerprint = log
        .split("fingerprint=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("the server logs its fingerprint:\n{log}"))?;
    Ok(fingerprint.to_string())
}

/// A pinned fingerprint: the right one is accepted, another refused on both sides.
fn a_pinned_certificate_is_checked_end_to_end() -> Result<(), Failed> {
    let secret = secret_file()?;
    let server = secured_server(&secret, &[])?;
    let pin = fingerprint_of(&server)?.parse().map_err(fail)?;
    let d = driver(&server.addr).with_secret_file(&secret.path).map_err(fail)?.with_tls_pin(pin);
    d.connect().map_err(|e| format!("the right pin is accepted: {e}"))?;
    let wrong = DistributedDispatcher::new(&server.addr)
        .with_secret_file(&secret.path)
        .map_err(fail)?
        .with_tls_pin("AB".repeat(32).parse().map_err(fail)?);
    let e = match wrong.connect() {
        Ok(()) => return Err("admitted with the wrong pin".into()),
        Err(e) => e.to_string(),
    };
    check(e.contains("not the pinned one"), format!("the driver says why: {e}"))?;
    let found = server.process.wait_for_log("TLS handshake failed", 1, WAIT);
    check(found, format!("the server logs it:\n{}", server.process.log_text()))
}

/// A CA, a certificate it issued for 127.0.0.1 (and its key), and another CA: as PEM files.
fn site_pki() -> Result<(TempFile, TempFile, TempFile, TempFile), Failed> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let authority = |name: &str| -> Result<(CertificateParams, KeyPair, String), Failed> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().map_err(fail)?;
        let pem = params.self_signed(&key).map_err(fail)?.pem();
        Ok((params, key, pem))
    };
    let (ca_params, ca_key, ca_pem) = authority("site CA")?;
    let (_, _, other_pem) = authority("another CA")?;
    let server_key = KeyPair::generate().map_err(fail)?;
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(fail)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_pem = server_params.signed_by(&server_key, &issuer).map_err(fail)?.pem();
    let file = |label, pem: String| TempFile::new(label, pem.as_bytes()).map_err(fail);
    Ok((
        file("ca", ca_pem)?,
        file("cert", server_pem)?,
        file("key", server_key.serialize_pem())?,
        file("other-ca", other_pem)?,
    ))
}

/// A server with the site's certificate (`--tls-cert/--tls-key`): a peer that trusts the
/// site's CA joins, a peer that trusts another CA is refused on both sides.
fn a_sites_own_certificates_are_checked() -> Result<(), Failed> {
    let secret = secret_file()?;
    let (ca, cert, key, other) = site_pki()?;
    let server = secured_server(&secret, &["--tls-cert", cert.arg(), "--tls-key", key.arg()])?;
    let log = server.process.log_text();
    check(log.contains("certificate=\"the site's\""), format!("the site's certificate:\n{log}"))?;
    let agent_args = ["--secret-file", secret.arg(), "--tls-ca", ca.arg()];
    let _agent = start_agent_with(&server.addr, 1, "site", &agent_args).map_err(fail)?;
    let d = driver(&server.addr).with_secret_file(&secret.path).map_err(fail)?;
    let d = d.with_tls_ca(&ca.path).map_err(fail)?;
    let id = d.run(echo::<u8>(), 3);
    let r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(r == [Ok(3)], format!("{r:?}"))?;
    let stranger = DistributedDispatcher::new(&server.addr)
        .with_secret_file(&secret.path)
        .map_err(fail)?
        .with_tls_ca(&other.path)
        .map_err(fail)?;
    let e = match stranger.connect() {
        Ok(()) => return Err("admitted with another CA".into()),
        Err(e) => e.to_string(),
    };
    check(e.contains("TLS handshake with the server failed"), format!("the driver says why: {e}"))?;
    let found = server.process.wait_for_log("rejected this server's certificate", 1, WAIT);
    check(found, format!("the server logs it:\n{}", server.process.log_text()))
}

/// With a data directory the server keeps its certificate: the same fingerprint after a restart
/// (so a pin keeps working); without one, each start makes a new certificate.
fn a_durable_server_keeps_its_certificate() -> Result<(), Failed> {
    let secret = secret_file()?;
    let dir = std::env::temp_dir().join(format!("blitzen-tls-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.to_str().unwrap_or_default().to_string();
    let mut first = secured_server(&secret, &["--data-dir", &data_dir])?;
    let kept = fingerprint_of(&first)?;
    let stopped = first.process.stop().map_err(fail)?;
    check(stopped.success(), format!("stopped: {stopped:?}"))?;
    let again = secured_server(&secret, &["--data-dir", &data_dir])?;
    let after = fingerprint_of(&again)?;
    let fresh = fingerprint_of(&secured_server(&secret, &[])?)?;
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
    check(after == kept, format!("{kept} before the restart, {after} after"))?;
    check(fresh != kept, "a server without a data directory makes its own")
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        trial!(nothing_travels_in_the_clear),
        trial!(connections_agree_on_a_post_quantum_key_exchange),
        trial!(a_tampered_byte_breaks_only_the_connection),
        trial!(a_man_in_the_middle_is_refused_on_both_sides),
        trial!(hostile_input_before_and_after_the_tls_handshake),
        trial!(a_pinned_certificate_is_checked_end_to_end),
        trial!(a_sites_own_certificates_are_checked),
        trial!(a_durable_server_keeps_its_certificate),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
