//! Framed MessagePack over TCP (or TLS over TCP), shared by the server, the agents and the
//! drivers.
//!
//! [`FramedReader`] yields decoded messages from a connection's read half ([`ReadSide`]: a TCP
//! socket's, or a TLS stream's); the write half is [`crate::writer`]'s.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blitzen_protocol::frame::decode_shared;
use blitzen_protocol::{DecodeError, FrameCodec, FrameError};
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// The read half of a connection: a TCP socket's, or a TLS stream's.
pub type ReadSide = Box<dyn AsyncRead + Send + Unpin>;

/// The write half of a connection: a TCP socket's, or a TLS stream's.
pub type WriteSide = Box<dyn AsyncWrite + Send + Unpin>;

/// A TCP socket's halves, each usable on its own task without a lock.
pub fn split_tcp(stream: TcpStream) -> (ReadSide, WriteSide) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

/// Any stream's halves (a TLS stream's: reading and writing take turns on one lock).
pub fn split<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ReadSide, WriteSide) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

/// A connection could not be read any more.
#[derive(thiserror::Error)]
pub enum NetError {
    /// The frame layer failed (too large, truncated, i/o).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame did not hold a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Not one byte arrived for this long (see [`FramedReader::next_alive`]).
    #[error("nothing arrived for {0:?}")]
    Silent(Duration),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Decodes messages off a socket's read half with the protocol's [`FrameCodec`]. Cancel-safe:
/// a `next` cancelled mid-read keeps what it has buffered.
pub struct FramedReader {
    socket: ReadSide,
    buf: BytesMut,
    codec: FrameCodec,
    /// When bytes last arrived (or the reader was made): what liveness counts from.
    progress: Instant,
    /// The silence timer of [`next_alive`](Self::next_alive), armed once and moved only when
    /// it fires early (bytes came since): arming a timer for every read would cost more than
    /// the read on a busy connection.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for FramedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedReader").field("buffered", &self.buf.len()).finish_non_exhaustive()
    }
}

impl FramedReader {
    /// A reader accepting frames of at most `max` bytes.
    pub fn new(socket: ReadSide, max: usize) -> Self {
        Self {
            socket,
            buf: BytesMut::with_capacity(64 * 1024),
            codec: FrameCodec::new(max),
            progress: Instant::now(),
            timer: None,
        }
    }

    /// Changes the frame limit (raised once a peer has been admitted).
    pub fn set_max(&mut self, max: usize) {
        self.codec = FrameCodec::new(max);
    }

    /// The next message; `Ok(None)` when the peer closed the connection between frames.
    pub async fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, NetError> {
        self.next_alive(None).await
    }

    /// [`next`](Self::next), giving up with [`NetError::Silent`] once `silence` has passed
    /// without a single byte arriving. Liveness counts bytes, not frames: a large frame
    /// crawling over a slow link keeps the connection alive however long it takes. When the
    /// limit is reached, what is already waiting in the socket is read before judging, so a
    /// process that was stopped (SIGSTOP, a paused VM) and wakes up late finds its peers'
    /// heartbeats instead of counting them lost.
    pub async fn next_alive<M: DeserializeOwned>(
        &mut self,
        silence: impl Into<Option<Duration>>,
    ) -> Result<Option<M>, NetError> {
        use tokio_util::codec::Decoder;
        let silence = silence.into();
        loop {
            if let Some(body) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(decode_shared(&body.freeze())?));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let read = match silence {
                None => self.socket.read_buf(&mut self.buf).await.map_err(FrameError::Io)?,
                Some(limit) => {
                    let due = self.progress + limit;
                    let timer = (self.timer)
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
                    tokio::select! {
                        biased;
                        read = self.socket.read_buf(&mut self.buf) => read.map_err(FrameError::Io)?,
                        () = timer.as_mut() => {
                            if due > Instant::now() {
                                // Bytes came since the timer was armed: wait from the last ones.
                                timer.as_mut().reset(due.into());
                                continue;
                            }
                            self.read_waiting(limit).await?
                        }
                    }
                }
            };
            if read == 0 {
                // End of stream: a clean end between frames, or a truncated frame.
                return match self.codec.decode_eof(&mut self.buf)? {
                    Some(body) => Ok(Some(decode_shared(&body.freeze())?)),
                    None => Ok(None),
                };
            }
            self.progress = Instant::now();
        }
    }

    /// At the silence limit: reads whatever the socket already holds, or fails with
    /// [`NetError::Silent`]. The runtime gets one turn first, so that readiness the kernel
    /// reported while this process was not running is seen before the verdict.
    async fn read_waiting(&mut self, limit: Duration) -> Result<usize, NetError> {
        tokio::task::yield_now().await;
        let attempt = tokio::time::timeout(Duration::ZERO, self.socket.read_buf(&mut self.buf));
        match attempt.await {
            Ok(read) => Ok(read.map_err(FrameError::Io)?),
            Err(_) => Err(NetError::Silent(limit)),
        }
    }
}

/// Connects with `TCP_NODELAY` set, giving up after `timeout`.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    name: &str,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addrs))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {name}")))??;
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

/// Checks that `server` is `host:port` (IPv6 in brackets) with a port from 1 to 65535, as
/// [`with_default_port`] makes it; says what is wrong otherwise.
pub fn check_address(server: &str) -> Result<(), String> {
    if server.trim().is_empty() {
        return Err("it is empty".into());
    }
    if server.chars().any(char::is_whitespace) {
        return Err("it contains a space".into());
    }
    let (host, port) = match server.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((v6, port)) => (v6, port),
            None => return Err("an IPv6 address in brackets needs a port: [ADDR]:PORT".into()),
        },
        None => match server.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => return Err("it has no port".into()),
        },
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("`{host}` is neither a host name nor an address"));
    }
    match port.parse::<u32>() {
        Ok(1..=65535) => Ok(()),
        Ok(n) => Err(format!("port {n} is out of range (1 to 65535)")),
        Err(_) => Err(format!("`{port}` is not a port number")),
    }
}

/// Parses a `--server HOST[:PORT]` flag: the address with `default_port` added when it has
/// none, or what is wrong with it.
pub fn parse_server(text: &str, default_port: u16) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the server address is empty (expected HOST or HOST:PORT)".into());
    }
    let bare_v6 = text.parse::<std::net::Ipv6Addr>().is_ok();
    let server = if bare_v6 || !text.contains(':') {
        with_default_port(text, default_port)
    } else {
        // A port is given: it must be a good one, not the start of `host:port:default`.
        text.to_string()
    };
    check_address(&server).map(|()| server).map_err(|reason| {
        format!("`{text}` is not a server address: {reason} (expected HOST or HOST:PORT)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::spawn_writer;
    use blitzen_protocol::frame::encode;

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        for ok in ["127.0.0.1:7464", "host.lan:1", "[::1]:65535"] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        assert_eq!(parse_server("::1", 7464), Ok("[::1]:7464".to_string()));
        assert_eq!(parse_server("host", 9), Ok("host:9".to_string()));
        for (bad, why) in [
            ("127.0.0.1:99999", "out of range"),
            ("127.0.0.1:0", "out of range"),
            ("127.0.0.1:abc", "not a port"),
            ("", "empty"),
            (":7464", "no host"),
            ("a b", "space"),
            ("1:2:3", "neither"),
        ] {
            let err = parse_server(bad, 7464).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

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
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let stream = connect(&[addr], "test", Duration::from_secs(5)).await.expect("connect");
            let (_read, write) = split_tcp(stream);
            let (tx, _) = spawn_writer::<(u32, String)>(write);
            for i in 0..1000 {
                tx.send((i, format!("message {i}"))).expect("writer alive");
            }
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, _write) = split_tcp(stream);
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
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut stream =
                connect(&[addr], "test", Duration::from_secs(5)).await.expect("connect");
            // A header announcing 10 bytes, then 3 of them, then the end.
            stream.write_all(&[0, 0, 0, 10, 1, 2, 3]).await.expect("write");
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let mut reader = FramedReader::new(split_tcp(stream).0, 1024);
        let err = reader.next::<u8>().await.expect_err("truncated");
        assert!(
            matches!(err, NetError::Frame(FrameError::Truncated { have: 7, need: 14 })),
            "{err}"
        );
        client.await.expect("client");
    }

    /// A frame that takes far longer than the silence limit to arrive, but keeps arriving,
    /// is read whole; a peer that then sends nothing is silent after the limit.
    #[tokio::test]
    async fn liveness_counts_bytes_not_frames() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let payload = vec![7u8; 200_000];
        let mut frame = BytesMut::new();
        encode(&payload, &mut frame).expect("encodes");
        let client = tokio::spawn(async move {
            let mut stream =
                connect(&[addr], "test", Duration::from_secs(5)).await.expect("connect");
            // 200 KB in 20 slices 40 ms apart: 800 ms for a frame, against a 300 ms limit.
            for chunk in frame.chunks(frame.len() / 20 + 1) {
                stream.write_all(chunk).await.expect("write");
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            // Then silence, with the connection open.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let mut reader = FramedReader::new(split_tcp(stream).0, 1 << 20);
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let got: Vec<u8> = reader.next_alive(limit).await.expect("alive").expect("a message");
        assert_eq!(got.len(), 200_000);
        assert!(started.elapsed() > limit * 2, "the frame took longer than the limit");
        let silent = Instant::now();
        let err = reader.next_alive::<u8>(limit).await.expect_err("silent");
        assert!(matches!(err, NetError::Silent(l) if l == limit), "{err}");
        // Counted from the last byte, which came just before the frame was complete.
        assert!(silent.elapsed() >= limit / 2 && silent.elapsed() < limit * 10);
        client.abort();
    }
}
