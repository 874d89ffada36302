//! `blitzen-net`: the transport of a Blitzen cluster, shared by the server, its agents and its
//! drivers.
//!
//! - [`framed`]: framed MessagePack over TCP — [`FramedReader`] decodes messages off a socket,
//!   [`spawn_writer`] batches outgoing ones into few writes (the writer task in `writer`).
//! - [`secret`]: the cluster's shared [`Secret`] (and [`Secrets`], one per role) and the
//!   HMAC proofs of it.
//! - [`handshake`]: both halves of the handshake that opens every connection —
//!   [`handshake::connect`] for agents and drivers, [`handshake::admit`] for the server.
//! - [`tls`]: TLS 1.3 for connections with a secret — the server's certificate, what peers
//!   check of it, and the keying material the secret's proofs are bound to.
//!
//! How they connect: a peer calls `connect`, the server `admit`s what it accepts; both get an
//! [`handshake::Admitted`] connection (a `FramedReader` and a write half) and then speak the
//! messages of `blitzen_protocol::cluster` through it.

pub mod framed;
pub mod handshake;
pub mod secret;
pub mod tls;
pub mod writer;

pub use framed::{
    FramedReader, NetError, ReadSide, WriteSide, check_address, parse_server, split, split_tcp,
    with_default_port,
};
pub use handshake::{AdmitError, Admitted, ConnectError, PeerTls, admit, connect, role_name};
pub use secret::{OneSidedSecrets, SECRET_ENV, Secret, SecretError, Secrets};
pub use writer::{Outbox, send_one, spawn_outbox, spawn_writer};
