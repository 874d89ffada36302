//! TLS 1.3 for cluster connections, with nothing to set up but the shared secret.
//!
//! The server presents a certificate — its own self-signed one ([`Identity::generate`], kept in
//! its data directory when it has one), or a site's ([`Identity::from_pem_files`]). A peer need
//! not trust that certificate up front: the secret's challenge–response runs inside TLS and
//! both proofs cover the TLS session's exported keying material ([`binding`]), so a man in the
//! middle who terminates TLS on each side holds two sessions with different keys, and fails the
//! handshake on both without learning anything about the secret. Sites with a PKI can make
//! peers check the certificate as well: against a CA ([`Verify::Ca`]) or a pinned fingerprint
//! ([`Verify::Pin`]).
//!
//! Only TLS 1.3, with aws-lc-rs' AES-GCM and ChaCha20-Poly1305 suites: every session has forward
//! secrecy (ephemeral key exchange), so a secret or a key stolen later does not open recorded
//! traffic. The key exchange is the post-quantum hybrid X25519MLKEM768 (ML-KEM with X25519), so
//! traffic recorded today stays closed to a quantum computer later; plain X25519 only for a
//! peer that does not offer it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

use tokio_rustls::{TlsAcceptor as RustlsAcceptor, TlsConnector};

/// The server's side of TLS: its certificate and settings, shared by every connection.
#[derive(Clone)]
pub struct TlsAcceptor(RustlsAcceptor);

/// A TCP socket read through a large buffer: rustls reads at most 4 KiB at a time, which
/// straight from the socket would cost a system call per 4 KiB of a large result.
pub type BufferedTcp = tokio::io::BufReader<tokio::net::TcpStream>;

/// How much [`BufferedTcp`] reads from the socket at once.
const READ_BUFFER: usize = 64 * 1024;

/// `stream` read through a large buffer (writes go straight through).
pub fn buffered(stream: tokio::net::TcpStream) -> BufferedTcp {
    tokio::io::BufReader::with_capacity(READ_BUFFER, stream)
}

impl TlsAcceptor {
    /// The server's half of a TLS handshake on `stream`.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<BufferedTcp>> {
        self.0.accept(buffered(stream)).await
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

/// The label of the keying material both proofs cover (RFC 8446 §7.5 exporters).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-blitzen-authentication";

/// The name a peer asks for when it checks nothing but the fingerprint or the binding.
const DEFAULT_NAME: &str = "blitzen";

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or parsed.
    #[error("cannot use {path} as a TLS {what}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// "certificate", "key" or "CA".
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A certificate could not be made, or rustls refused the settings.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    /// A fingerprint to pin is not 64 hex digits (colons allowed).
    #[error("`{0}` is not a SHA-256 fingerprint: give 64 hex digits (colons allowed)")]
    BadFingerprint(String),
}

/// The server's certificate chain and private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

/// The file names of a generated identity kept in a directory.
const CERT_FILE: &str = "tls-cert.der";
const KEY_FILE: &str = "tls-key.der";

impl Identity {
    /// A fresh self-signed certificate.
    pub fn generate() -> Result<Self, TlsError> {
        let made = rcgen::generate_simple_self_signed(vec![DEFAULT_NAME.to_string()])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        Ok(Self { chain: vec![made.cert.der().clone()], key: key.into() })
    }

    /// The identity kept in `dir`, or a fresh one saved there (the key readable by its owner
    /// only): its fingerprint stays the same across restarts.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let file_error = |path: &Path, what, e: std::io::Error| TlsError::File {
            path: path.to_path_buf(),
            what,
            message: e.to_string(),
        };
        if cert_path.exists() || key_path.exists() {
            let cert =
                std::fs::read(&cert_path).map_err(|e| file_error(&cert_path, "certificate", e))?;
            let key = std::fs::read(&key_path).map_err(|e| file_error(&key_path, "key", e))?;
            return Ok(Self {
                chain: vec![CertificateDer::from(cert)],
                key: PrivatePkcs8KeyDer::from(key).into(),
            });
        }
        let identity = Self::generate()?;
        write_private(&key_path, identity.key.secret_der())
            .map_err(|e| file_error(&key_path, "key", e))?;
        std::fs::write(&cert_path, identity.chain[0].as_ref())
            .map_err(|e| file_error(&cert_path, "certificate", e))?;
        Ok(identity)
    }

    /// A site's certificate chain and key, from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let file_error = |path: &Path, what, message: String| TlsError::File {
            path: path.to_path_buf(),
            what,
            message,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_error(cert, "certificate", e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(cert, "certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(file_error(cert, "certificate", "it holds no certificate".into()));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, "key", e.to_string()))?;
        Ok(Self { chain, key })
    }

    /// The SHA-256 fingerprint of its certificate, what peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// The server's side of TLS with this identity.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(TlsAcceptor(RustlsAcceptor::from(Arc::new(config))))
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// aws-lc-rs' TLS 1.3 suites, AES-128-GCM first: as secure for this purpose as AES-256 and about
/// a third faster; ChaCha20-Poly1305 for machines without AES instructions. Key exchange:
/// X25519MLKEM768 first, X25519 for a peer without it.
fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    use aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    provider.kx_groups = vec![X25519MLKEM768, X25519];
    Arc::new(provider)
}

/// A certificate's SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;

    /// 64 hex digits, colons allowed (`AB:CD:…`, as the server logs it).
    fn from_str(text: &str) -> Result<Self, TlsError> {
        let digits: String = text.trim().chars().filter(|&c| c != ':').collect();
        let bad = || TlsError::BadFingerprint(text.to_string());
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a peer checks of the server's certificate, beyond the binding of the secret's proofs to
/// the TLS session (which is always checked, and is what authenticates the server).
#[derive(Debug, Clone, Default)]
pub enum Verify {
    /// Nothing more: the secret authenticates the server.
    #[default]
    Binding,
    /// The certificate's SHA-256 fingerprint must be this one.
    Pin(Fingerprint),
    /// The certificate must chain to one of these CAs and name the server's host.
    Ca(Arc<RootCertStore>),
}

impl Verify {
    /// The CAs in a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, TlsError> {
        let file_error =
            |message: String| TlsError::File { path: path.to_path_buf(), what: "CA", message };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(e.to_string()))? {
            let cert = cert.map_err(|e| file_error(e.to_string()))?;
            roots.add(cert).map_err(|e| file_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(file_error("it holds no certificate".into()));
        }
        Ok(Verify::Ca(Arc::new(roots)))
    }

    /// The peer's side of TLS with this check. `host` is the server's host as the peer names it
    /// (what a CA-issued certificate must name).
    pub fn connector(&self, host: &str) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let (config, name) = match self {
            Verify::Ca(roots) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| TlsError::Setup(format!("`{host}` as a TLS name: {e}")))?;
                (builder.with_root_certificates(roots.clone()).with_no_client_auth(), name)
            }
            other => {
                let verifier = Arc::new(AnyOrPinned { pin: other.pin(), provider: provider() });
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                (
                    config,
                    ServerName::try_from(DEFAULT_NAME)
                        .map_err(|e| TlsError::Setup(e.to_string()))?,
                )
            }
        };
        Ok((TlsConnector::from(Arc::new(config)), name))
    }

    fn pin(&self) -> Option<Fingerprint> {
        match self {
            Verify::Pin(f) => Some(*f),
            _ => None,
        }
    }
}

/// Accepts any certificate, or only a pinned one, but always checks that the server holds the
/// certificate's key (its TLS 1.3 handshake signature).
#[derive(Debug)]
struct AnyOrPinned {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if Fingerprint::of(end_entity) != pin => {
                Err(rustls::Error::General(format!(
                    "the server's certificate (SHA-256 {}) is not the pinned one ({pin})",
                    Fingerprint::of(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The key exchange a TLS session negotiated, by its name: `X25519MLKEM768` between Blitzen's
/// own peers.
pub fn key_exchange<D>(connection: &rustls::ConnectionCommon<D>) -> Option<String> {
    connection.negotiated_key_exchange_group().map(|group| format!("{:?}", group.name()))
}

/// The keying material of a TLS session that both proofs of the secret cover.
pub fn binding<D>(connection: &rustls::ConnectionCommon<D>) -> Result<[u8; 32], rustls::Error> {
    connection.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_with_or_without_colons() {
        let identity = Identity::generate().expect("generates");
        let shown = identity.fingerprint().to_string();
        assert_eq!(shown.len(), 64 + 31);
        assert_eq!(shown.parse::<Fingerprint>().expect("parses"), identity.fingerprint());
        let bare: String = shown.chars().filter(|&c| c != ':').collect();
        assert_eq!(bare.parse::<Fingerprint>().expect("parses"), identity.fingerprint());
        for bad in ["", "AB", &bare[..62], &format!("{}zz", &bare[..62])] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_kept_identity_is_the_same_after_reloading() {
        let dir = std::env::temp_dir().join(format!("blitzen-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let first = Identity::load_or_generate(&dir).expect("made");
        let again = Identity::load_or_generate(&dir).expect("loaded");
        assert_eq!(first.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE)).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        again.acceptor().expect("usable");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
