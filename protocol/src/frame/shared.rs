//! Payloads decoded without a copy: large byte fields of a message (marked
//! `#[serde(deserialize_with = "shared_bytes")]`, such as a [`Blob`](crate::Blob)'s) become
//! slices of the frame they arrived in ([`decode_shared`], [`with_shared_frame`]).

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::DeserializeOwned;

use super::DecodeError;

thread_local! {
    /// The frame being decoded by [`decode_shared`] on this thread, if any.
    static SHARED_FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Payloads at least this long are shared with the frame instead of copied. Shorter ones are
/// copied, so that a small value kept for long does not pin a large read buffer.
pub const SHARE_THRESHOLD: usize = 4096;

/// Decodes one frame body like [`decode`](super::decode), but large payload fields marked with
/// `#[serde(deserialize_with = "shared_bytes")]` become slices of `body` instead of copies.
pub fn decode_shared<M: DeserializeOwned>(body: &Bytes) -> Result<M, DecodeError> {
    SHARED_FRAME.with(|f| *f.borrow_mut() = Some(body.clone()));
    let result = rmp_serde::from_slice(body);
    SHARED_FRAME.with(|f| *f.borrow_mut() = None);
    Ok(result?)
}

/// Runs `f` with `body` as the frame that large payloads decoded meanwhile on this thread (fields
/// marked `shared_bytes`, such as a [`Blob`](crate::Blob)'s) are sliced from rather than copied,
/// as [`decode_shared`] does for its own decoding: for decoders that are given a slice of `body`.
pub fn with_shared_frame<R>(body: &Bytes, f: impl FnOnce() -> R) -> R {
    /// Puts the frame before back, even if `f` panics.
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SHARED_FRAME.with(|f| *f.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SHARED_FRAME.with(|f| f.replace(Some(body.clone()))));
    f()
}

/// Deserializes a payload as `Bytes`, sharing the frame's memory under [`decode_shared`].
pub fn shared_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytesVisitor)
}

struct SharedBytesVisitor;

impl<'de> serde::de::Visitor<'de> for SharedBytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        if v.len() >= SHARE_THRESHOLD {
            let shared = SHARED_FRAME.with(|f| {
                let frame = f.borrow();
                let frame = frame.as_ref()?;
                let inside = frame.as_ptr() as usize <= v.as_ptr() as usize
                    && v.as_ptr() as usize + v.len() <= frame.as_ptr() as usize + frame.len();
                inside.then(|| frame.slice_ref(v))
            });
            if let Some(bytes) = shared {
                return Ok(bytes);
            }
        }
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SHARE_THRESHOLD));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, decode_frame, encode};
    use bytes::BytesMut;

    #[test]
    fn large_payloads_are_shared_small_ones_copied() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Msg {
            #[serde(deserialize_with = "shared_bytes")]
            big: Bytes,
            #[serde(deserialize_with = "shared_bytes")]
            small: Bytes,
        }
        let msg = Msg { big: Bytes::from(vec![1u8; 10_000]), small: Bytes::from_static(b"abc") };
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).expect("encodes");
        let body = decode_frame(&mut buf, usize::MAX).expect("valid").expect("complete").freeze();
        let back: Msg = decode_shared(&body).expect("decodes");
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(back.big.as_ptr() as usize)), "big payload was copied");
        assert!(!range.contains(&(back.small.as_ptr() as usize)), "small payload was shared");
        assert_eq!((back.big.len(), &back.small[..]), (10_000, &b"abc"[..]));
        // Plain decoding copies, and still works.
        let copied: Msg = decode(&body).expect("decodes");
        assert!(!range.contains(&(copied.big.as_ptr() as usize)));
    }

    #[test]
    fn a_given_body_is_sliced_from_while_it_is_set_and_only_then() {
        let body =
            Bytes::from(crate::frame::to_body(&Bytes::from(vec![7u8; 10_000])).expect("encodes"));
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let inside: crate::Blob = with_shared_frame(&body, || decode(&body)).expect("decodes");
        assert!(range.contains(&(inside.as_ptr() as usize)), "sliced from the body");
        let after: crate::Blob = decode(&body).expect("decodes");
        assert!(!range.contains(&(after.as_ptr() as usize)), "copied once the body is unset");
    }
}
