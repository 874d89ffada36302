//! Framed MessagePack over TCP, shared by the server, the agents and the drivers.
//!
//! [`FramedReader`] yields decoded messages from a socket's read half; [`spawn_writer`] starts a
//! task that encodes queued messages and writes everything queued in one `write`, so frames are
//! batched under load and sent at once when the connection is otherwise idle.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use blitzen_protocol::frame::{decode_shared, encode};
use blitzen_protocol::{DecodeError, FrameCodec, FrameError};
use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::debug;

/// Bytes gathered into one write at most.
const WRITE_BATCH: usize = 1024 * 1024;

/// A connection could not be read any more.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The frame layer failed (too large, truncated, i/o).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame did not hold a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes messages off a socket's read half with the protocol's [`FrameCodec`]. Cancel-safe:
/// a `next` cancelled mid-read keeps what it has buffered.
#[derive(Debug)]
pub struct FramedReader {
    socket: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
}

impl FramedReader {
    /// A reader accepting frames of at most `max` bytes.
    pub fn new(socket: OwnedReadHalf, max: usize) -> Self {
        Self { socket, buf: BytesMut::with_capacity(64 * 1024), codec: FrameCodec::new(max) }
    }

    /// Changes the frame limit (raised once a peer has been admitted).
    pub fn set_max(&mut self, max: usize) {
        self.codec = FrameCodec::new(max);
    }

    /// The next message; `Ok(None)` when the peer closed the connection between frames.
    pub async fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, NetError> {
        use tokio_util::codec::Decoder;
        loop {
            if let Some(body) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(decode_shared(&body.freeze())?));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.socket.read_buf(&mut self.buf).await.map_err(FrameError::Io)? == 0 {
                // End of stream: a clean end between frames, or a truncated frame.
                return match self.codec.decode_eof(&mut self.buf)? {
                    Some(body) => Ok(Some(decode_shared(&body.freeze())?)),
                    None => Ok(None),
                };
            }
        }
    }
}

/// Starts a task that writes every message sent on the returned channel, in order, batching
/// whatever is queued into one write. It ends when every sender is dropped (then shuts the
/// socket down for writing) or when a write fails; await the handle to know everything left.
pub fn spawn_writer<M: Serialize + Send + 'static>(
    mut socket: OwnedWriteHalf,
) -> (mpsc::UnboundedSender<M>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<M>();
    let handle = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                if let Err(e) = encode(&msg, &mut buf) {
                    // A message over the frame limit is a bug of the sender; drop it loudly.
                    tracing::error!(error = %e, "cannot encode an outgoing message; dropped");
                }
                if buf.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if let Err(e) = socket.write_all(&buf).await {
                debug!(error = %e, "connection write failed");
                return;
            }
            buf.clear();
        }
        let _ = socket.shutdown().await;
    });
    (tx, handle)
}

/// Writes one message directly (for handshakes, before a writer task exists).
pub async fn send_one<M: Serialize>(socket: &mut OwnedWriteHalf, msg: &M) -> io::Result<()> {
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).map_err(io::Error::other)?;
    socket.write_all(&buf).await
}

/// Connects with `TCP_NODELAY` set, giving up after `timeout`.
pub(crate) async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `host[:port]` with `default_port` when no port is given; IPv6 addresses in brackets.
pub fn with_default_port(server: &str, default_port: u16) -> String {
    if server.parse::<SocketAddr>().is_ok() {
        return server.to_string();
    }
    let bare_v6 = server.parse::<std::net::Ipv6Addr>().is_ok();
    match server.rsplit_once(':') {
        _ if bare_v6 => format!("[{server}]:{default_port}"),
        Some((_, port)) if port.parse::<u16>().is_ok() => server.to_string(),
        _ => format!("{server}:{default_port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("127.0.0.1", 7464), "127.0.0.1:7464");
        assert_eq!(with_default_port("127.0.0.1:9", 7464), "127.0.0.1:9");
        assert_eq!(with_default_port("host.lan", 7464), "host.lan:7464");
        assert_eq!(with_default_port("host.lan:80", 7464), "host.lan:80");
        assert_eq!(with_default_port("::1", 7464), "[::1]:7464");
        assert_eq!(with_default_port("[::1]:5", 7464), "[::1]:5");
    }

    #[tokio::test]
    async fn messages_cross_a_socket_in_order_and_eof_is_clean() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let client = tokio::spawn(async move {
            let stream = connect(&addr, Duration::from_secs(5)).await.expect("connect");
            let (_read, write) = stream.into_split();
            let (tx, _) = spawn_writer::<(u32, String)>(write);
            for i in 0..1000 {
                tx.send((i, format!("message {i}"))).expect("writer alive");
            }
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, _write) = stream.into_split();
        let mut reader = FramedReader::new(read, 1024);
        for i in 0..1000u32 {
            let (n, text): (u32, String) = reader.next().await.expect("valid").expect("a message");
            assert_eq!((n, text), (i, format!("message {i}")));
        }
        assert!(reader.next::<(u32, String)>().await.expect("clean end").is_none());
        client.await.expect("client");
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_a_truncation_error() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let client = tokio::spawn(async move {
            let mut stream = connect(&addr, Duration::from_secs(5)).await.expect("connect");
            // A header announcing 10 bytes, then 3 of them, then the end.
            stream.write_all(&[0, 0, 0, 10, 1, 2, 3]).await.expect("write");
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let mut reader = FramedReader::new(stream.into_split().0, 1024);
        let err = reader.next::<u8>().await.expect_err("truncated");
        assert!(
            matches!(err, NetError::Frame(FrameError::Truncated { have: 7, need: 14 })),
            "{err}"
        );
        client.await.expect("client");
    }
}
