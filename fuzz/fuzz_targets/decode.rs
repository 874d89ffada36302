//! Arbitrary bytes through everything that decodes what a peer sends: the frame layer (both
//! readers), then every message type of the worker and cluster protocols. Nothing may panic,
//! hang or allocate beyond the frame limit.

#![no_main]

use blitzen_protocol::cluster::{FromAgent, FromDriver, Hello, HelloReply, Proof, ToAgent, ToDriver};
use blitzen_protocol::frame::{FrameCodec, FrameReader, decode_frame, decode_shared};
use blitzen_protocol::{FromWorker, ToWorker};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Small enough that the fuzzer reaches "too large" quickly.
const LIMIT: usize = 1 << 16;

fn every_message(body: &Bytes) {
    let _ = decode_shared::<Hello>(body);
    let _ = decode_shared::<HelloReply>(body);
    let _ = decode_shared::<Proof>(body);
    let _ = decode_shared::<FromDriver>(body);
    let _ = decode_shared::<ToDriver>(body);
    let _ = decode_shared::<FromAgent>(body);
    let _ = decode_shared::<ToAgent>(body);
    let _ = decode_shared::<FromWorker>(body);
    let _ = decode_shared::<ToWorker>(body);
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a message body on their own.
    every_message(&Bytes::copy_from_slice(data));
    // The bytes as a stream of frames, through the decoding core.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(body)) = decode_frame(&mut buf, LIMIT) {
        every_message(&body.freeze());
    }
    // Through the blocking reader, as a pool reads its workers.
    let mut reader = FrameReader::new(data, LIMIT);
    while let Ok(Some(body)) = reader.read_frame() {
        every_message(&body.freeze());
    }
    // And through the async codec, as the server reads its peers, to the end of the stream.
    let mut codec = FrameCodec::new(LIMIT);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(body)) = codec.decode_eof(&mut buf) {
        every_message(&body.freeze());
    }
});
