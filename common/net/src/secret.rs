//! The shared secret of a cluster ([`Secret`], and [`Secrets`] for a server that gives agents
//! and drivers different ones) and the proofs of it that the handshake exchanges: a mutual
//! HMAC-SHA256 challenge and response.
//!
//! ```text
//! peer   → server   Hello { version, role, nonce_p }
//! server → peer     Challenge { nonce_s, proof_s = HMAC(key, "blitzen server" | role | nonce_p | nonce_s) }
//! peer   → server   Proof { proof_p = HMAC(key, "blitzen peer" | role | nonce_p | nonce_s) }
//! server → peer     Welcome, or Refusal("wrong secret")
//! ```
//!
//! Both sides pick a fresh 32-byte nonce per connection, so no proof can be replayed; the role
//! is in the MAC, so a proof made with the agents' secret does not admit a driver; the two
//! directions are labelled differently, so the server cannot be used to compute a peer's proof.
//! Proofs are compared in constant time and the secret never crosses the network. Traffic after
//! the handshake is not encrypted. The exchange itself is in [`crate::handshake`].

use std::fmt;
use std::path::Path;

use blitzen_protocol::cluster::Role;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Environment variable holding the secret, when no file is given.
pub const SECRET_ENV: &str = "BLITZEN_SECRET";

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Length of nonces.
pub const NONCE_LEN: usize = 32;

/// A shared secret. Its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

/// Why a secret cannot be used.
#[derive(thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too short to resist guessing.
    #[error(
        "the secret from {origin} is {len} bytes long; use at least {MIN_SECRET_LEN} (for example `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort {
        /// Where it came from.
        origin: String,
        /// Its length.
        len: usize,
    },
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Secret {
    /// A secret from bytes; surrounding whitespace (a file's final newline) is not part of it.
    pub fn new(bytes: impl AsRef<[u8]>, origin: &str) -> Result<Self, SecretError> {
        let bytes = bytes.as_ref().trim_ascii();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { origin: origin.to_string(), len: bytes.len() });
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Reads a secret file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|source| SecretError::Read { path: origin.clone(), source })?;
        Self::new(bytes, &origin)
    }

    /// The secret in the file at `path` when one is named, else the one in [`SECRET_ENV`], if
    /// set: the rule of every front end's `--secret-file`.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Option<Self>, SecretError> {
        match path {
            Some(path) => Self::from_file(path).map(Some),
            None => Self::from_env(),
        }
    }

    /// The secret in [`SECRET_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var_os(SECRET_ENV) {
            Some(v) => Self::new(v.as_encoded_bytes(), SECRET_ENV).map(Some),
            None => Ok(None),
        }
    }

    fn mac(&self, label: &[u8], role: &str, exchange: &Exchange<'_>) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        let parts =
            [label, role.as_bytes(), exchange.peer_nonce, exchange.server_nonce, exchange.binding];
        for part in parts {
            // Length-prefixed, so that no two different inputs read the same.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// Whether `candidate` is this secret (a dashboard's token), compared in constant time.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let (a, b) = (&self.0, candidate);
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The proof one side sends.
    pub fn proof(&self, side: Side, role: &str, exchange: &Exchange<'_>) -> Vec<u8> {
        self.mac(side.label(), role, exchange).finalize().into_bytes().to_vec()
    }

    /// Whether `proof` is the one `side` should have sent (compared in constant time).
    pub fn verify(&self, side: Side, role: &str, exchange: &Exchange<'_>, proof: &[u8]) -> bool {
        self.mac(side.label(), role, exchange).verify_slice(proof).is_ok()
    }
}

/// What both proofs of one handshake cover besides the secret, the side and the role.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The connecting side's nonce.
    pub peer_nonce: &'a [u8],
    /// The server's nonce.
    pub server_nonce: &'a [u8],
    /// The TLS session's exported keying material ([`crate::tls::binding`]); empty in the
    /// clear. A man in the middle holds two TLS sessions with different material, so proofs
    /// forwarded from one to the other fail.
    pub binding: &'a [u8],
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The shared secrets of a server: one for agents and one for drivers, so that a worker host
/// can be given a secret that does not let it submit work. Usually both are the same; either
/// both are set or neither ([`Secrets::check`]).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// What agents must prove.
    pub agents: Option<Secret>,
    /// What drivers must prove.
    pub drivers: Option<Secret>,
}

/// A secret for one role only.
#[derive(Clone, Copy, thiserror::Error)]
#[error(
    "a secret for only one role: agents and drivers are authenticated both or neither (give \
     one secret for both, or one for each)"
)]
pub struct OneSidedSecrets;

impl Secrets {
    /// The same secret for agents and drivers.
    pub fn both(secret: Secret) -> Self {
        Self { agents: Some(secret.clone()), drivers: Some(secret) }
    }

    /// Whether peers are authenticated at all.
    pub fn enabled(&self) -> bool {
        self.agents.is_some() || self.drivers.is_some()
    }

    /// Refuses a secret for one role only: the other role would be admitted unauthenticated.
    pub fn check(&self) -> Result<(), OneSidedSecrets> {
        if self.agents.is_some() == self.drivers.is_some() { Ok(()) } else { Err(OneSidedSecrets) }
    }

    /// The secret peers of `role` must prove, if any.
    pub fn for_role(&self, role: &Role) -> Option<&Secret> {
        match role {
            Role::Agent { .. } => self.agents.as_ref(),
            // Status and cancel are the drivers' business.
            Role::Driver { .. } | Role::Observer { .. } => self.drivers.as_ref(),
        }
    }
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for OneSidedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Who computes a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server, answering a peer's hello.
    Server,
    /// The connecting agent or driver.
    Peer,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Server => b"blitzen server",
            Side::Peer => b"blitzen peer",
        }
    }
}

/// A fresh random nonce from the operating system.
pub fn nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s, "test").expect("long enough")
    }

    #[test]
    fn proofs_bind_the_secret_the_side_the_role_both_nonces_and_the_tls_session() {
        let k = secret("correct horse battery staple");
        let (p, s) = (nonce().expect("nonce"), nonce().expect("nonce"));
        assert_ne!(p, s, "nonces are fresh");
        let tls = [9u8; 32];
        let x = Exchange { peer_nonce: &p, server_nonce: &s, binding: &tls };
        let proof = k.proof(Side::Peer, "agent", &x);
        assert!(k.verify(Side::Peer, "agent", &x, &proof));
        assert!(!secret("another secret entirely").verify(Side::Peer, "agent", &x, &proof));
        assert!(!k.verify(Side::Server, "agent", &x, &proof), "the server's label differs");
        assert!(!k.verify(Side::Peer, "driver", &x, &proof), "the role is bound");
        let swapped = Exchange { peer_nonce: &s, server_nonce: &p, ..x };
        assert!(!k.verify(Side::Peer, "agent", &swapped, &proof), "the nonces are bound in order");
        let other_session = Exchange { binding: &[8u8; 32], ..x };
        assert!(!k.verify(Side::Peer, "agent", &other_session, &proof), "the TLS session is bound");
        let clear = Exchange { binding: &[], ..x };
        assert!(!k.verify(Side::Peer, "agent", &clear, &proof), "TLS or not is bound");
        assert!(!k.verify(Side::Peer, "agent", &x, &proof[..31]), "truncated proof");
        assert!(!k.verify(Side::Peer, "agent", &x, &[]), "empty proof");
    }

    #[test]
    fn short_secrets_are_refused_and_whitespace_is_trimmed() {
        assert!(matches!(Secret::new("short", "x"), Err(SecretError::TooShort { len: 5, .. })));
        assert_eq!(secret("0123456789abcdef\n"), secret("0123456789abcdef"));
        assert_eq!(format!("{:?}", secret("0123456789abcdef")), "Secret(16 bytes)");
        let missing = Secret::from_file("/nonexistent/secret").expect_err("no such file");
        assert!(missing.to_string().contains("/nonexistent/secret"), "{missing}");
    }
}
