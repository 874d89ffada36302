//! Length-prefixed MessagePack frames.
//!
//! A frame is `len: u32 (big-endian)` followed by `len` bytes of body. The body is one
//! MessagePack message written with named fields. [`decode_frame`] splits frames off a buffer;
//! the blocking [`FrameReader`] and the async [`FrameCodec`] are thin shells around it.
//!
//! A decoder that returned an error has lost its place in the stream: the only safe reaction is
//! to close the connection.

use std::io::{self, Read};

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

mod shared;

pub use shared::{SHARE_THRESHOLD, decode_shared, shared_bytes, with_shared_frame};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// The largest frame body either end accepts or sends, in bytes (128 MiB).
///
/// Large enough for a 32 MiB argument or result with room to spare, small enough that a peer
/// cannot make us reserve gigabytes with one length prefix.
pub const MAX_FRAME_LEN: usize = 128 * 1024 * 1024;

/// The most payload bytes (arguments, results) gathered into one message of several tasks: a
/// quarter of a frame, so that a batch never comes near [`MAX_FRAME_LEN`].
pub const BATCH_BYTES: usize = MAX_FRAME_LEN / 4;

/// The largest arguments (or value) one task may carry: a frame, less room for the rest of its
/// message.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 1024 * 1024;

/// Splits `items` into runs of at most [`BATCH_BYTES`] of payload each (by `size`), in order;
/// an item larger than that is a run of its own; no runs for no items.
pub fn by_size<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let total: usize = items.iter().map(&size).sum();
    if items.is_empty() {
        return Vec::new();
    }
    if total <= BATCH_BYTES {
        return vec![items];
    }
    let mut runs = Vec::new();
    let (mut run, mut bytes) = (Vec::new(), 0);
    for item in items {
        let len = size(&item);
        if !run.is_empty() && bytes + len > BATCH_BYTES {
            runs.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += len;
        run.push(item);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// A frame could not be read: the stream is unusable afterwards.
#[derive(thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit. Retrying cannot help: the peer is
    /// misbehaving or speaks another protocol.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// The underlying read failed.
    #[error("i/o error while reading a frame: {0}")]
    Io(#[from] io::Error),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A message could not be turned into a frame.
#[derive(thiserror::Error)]
pub enum EncodeError {
    /// Serialization failed (a type that MessagePack cannot represent, such as a map with
    /// non-string keys in some serde impls).
    #[error("cannot encode message: {0}")]
    Serialize(#[from] rmp_serde::encode::Error),
    /// The encoded message is larger than [`MAX_FRAME_LEN`].
    #[error("encoded message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A frame body is not a valid message of the expected type.
#[derive(thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Appends one frame holding `msg` to `dst`.
///
/// On error `dst` is left as it was.
pub fn encode<M: Serialize>(msg: &M, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let start = dst.len();

    dst.put_u32(0);
    let mut writer = dst.writer();
    let result = rmp_serde::encode::write_named(&mut writer, msg);
    let dst = writer.into_inner();
    if let Err(e) = result {
        dst.truncate(start);
        return Err(e.into());
    }
    let len = dst.len() - start - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        dst.truncate(start);
        return Err(EncodeError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    // `len <= MAX_FRAME_LEN < u32::MAX`, checked just above.
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes `msg` as a MessagePack body (no length prefix), with named fields.
///
/// Used for task arguments and results, which travel inside other messages as opaque bytes.
pub fn to_body<M: Serialize + ?Sized>(msg: &M) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(msg)
}

/// Decodes one frame body (as returned by [`decode_frame`]) into a message.
pub fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<M, DecodeError> {
    Ok(rmp_serde::from_slice(body)?)
}

/// Splits the next complete frame body off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and reserves room for the rest of the frame),
/// `Err` when the length prefix is over `max`. This is the one decoding core of the crate.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&buf[..HEADER_LEN]);
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let need = HEADER_LEN + len;
    if buf.len() < need {
        buf.reserve(need - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len)))
}

/// The async side: a `tokio_util` codec yielding frame bodies.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec that refuses frames larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        decode_frame(src, self.max)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match decode_frame(src, self.max)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(truncated(src)),
        }
    }
}

fn truncated(buf: &BytesMut) -> FrameError {
    let need = if buf.len() >= HEADER_LEN {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        HEADER_LEN + u32::from_be_bytes(header) as usize
    } else {
        HEADER_LEN
    };
    FrameError::Truncated { have: buf.len(), need }
}

/// The blocking side: reads frame bodies from any `Read`, buffering so that many small frames
/// cost one `read` call.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes received and not yet returned as frames.
    buf: BytesMut,
    /// Fixed landing area for `read`, initialised once so that no read pays for zeroing.
    scratch: Box<[u8]>,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    /// A reader that refuses frames larger than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0u8; 256 * 1024].into_boxed_slice(),
            max,
        }
    }

    /// Whether a complete frame is already buffered, so that [`FrameReader::read_frame`] will
    /// return without reading.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < HEADER_LEN {
            return false;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        self.buf.len() >= HEADER_LEN + u32::from_be_bytes(header) as usize
    }

    /// The next frame body; `Ok(None)` at a clean end of stream (between frames).
    pub fn read_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, self.max)? {
                return Ok(Some(frame));
            }
            let n = match self.inner.read(&mut self.scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(truncated(&self.buf)) };
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn batches_stay_within_their_bytes_and_keep_order() {
        let sizes = vec![BATCH_BYTES / 2, BATCH_BYTES / 2, 1, BATCH_BYTES * 2, 3];
        let runs = by_size(sizes.clone(), |&n| n);
        assert_eq!(runs, vec![vec![sizes[0], sizes[1]], vec![1], vec![BATCH_BYTES * 2], vec![3]]);
        assert_eq!(by_size(vec![1, 2, 3], |&n| n), vec![vec![1, 2, 3]]);
        assert!(by_size(Vec::<usize>::new(), |&n| n).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    /// Feeds `stream` to the async codec in the given chunk sizes and collects the frames.
    fn decode_chunked(stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>, String> {
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut cuts = cuts.iter().copied().cycle();
        while pos < stream.len() {
            let step = cuts.next().unwrap_or(1).max(1).min(stream.len() - pos);
            buf.extend_from_slice(&stream[pos..pos + step]);
            pos += step;
            while let Some(f) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
                out.push(f.to_vec());
            }
        }
        if let Some(f) = codec.decode_eof(&mut buf).map_err(|e| e.to_string())? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn cut_anywhere_decodes_the_same(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..10),
        ) {
            let stream = framed(&bodies);
            prop_assert_eq!(decode_chunked(&stream, &cuts).expect("valid stream"), bodies.clone());
            // The blocking reader agrees, even when `read` returns a few bytes at a time.
            let mut reader = FrameReader::new(Trickle { data: &stream, pos: 0, step: cuts[0] }, 1 << 20);
            let mut got = Vec::new();
            assert!(!reader.has_frame());
            while let Some(f) = reader.read_frame().expect("valid stream") {
                got.push(f.to_vec());
            }
            prop_assert_eq!(got, bodies);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_chunked(&data, &[7, 1, 100]);
            let mut reader = FrameReader::new(&data[..], 1 << 16);
            while let Ok(Some(_)) = reader.read_frame() {}
        }
    }

    struct Trickle<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversized_prefix_is_refused_without_reserving() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2][..]);
        let err = decode_frame(&mut buf, 1024).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len: 0xffff_ffff, max: 1024 }), "{err}");
        assert!(buf.capacity() < 1024 * 1024);
    }

    #[test]
    fn truncated_stream_is_an_error_not_a_clean_end() {
        let stream = framed(&[vec![1, 2, 3, 4]]);
        let mut reader = FrameReader::new(&stream[..6], 1024);
        assert!(matches!(reader.read_frame(), Err(FrameError::Truncated { have: 6, need: 8 })));
        let mut empty = FrameReader::new(&[][..], 1024);
        assert!(matches!(empty.read_frame(), Ok(None)));
    }

    #[test]
    fn encode_writes_the_length_prefix() {
        let mut buf = BytesMut::new();
        encode(&("hello", 5u8), &mut buf).expect("encodes");
        let body = decode_frame(&mut buf, 1024).expect("valid").expect("complete");
        let back: (String, u8) = decode(&body).expect("decodes");
        assert_eq!(back, ("hello".to_string(), 5));
        assert!(buf.is_empty());
    }
}
