//! [`Blob`]: binary data that is not copied on arrival.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::frame::shared_bytes;

/// Binary data for task arguments and results, carried as MessagePack binary.
///
/// A `Vec<u8>` or `serde_bytes::ByteBuf` result is copied out of the received message into a
/// new buffer when it is decoded; a large `Blob` (4 KiB or more) is instead a shared slice of
/// the received message, so a 1 MiB result costs one less copy and one less fresh megabyte of
/// memory. Cheap to clone; reads as a `&[u8]`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// The data as [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(Bytes::from(v))
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(b)
    }
}

impl From<&'static [u8]> for Blob {
    fn from(b: &'static [u8]) -> Self {
        Blob(Bytes::from_static(b))
    }
}

impl From<Blob> for Vec<u8> {
    fn from(b: Blob) -> Self {
        b.0.into()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        shared_bytes(deserializer).map(Blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, decode_shared};

    #[test]
    fn large_blobs_share_the_message_small_ones_are_copied() {
        let value = (Blob::from(vec![7u8; 10_000]), Blob::from(&b"abc"[..]));
        let encoded = Bytes::from(rmp_serde::to_vec(&value).expect("encodes"));
        let (big, small): (Blob, Blob) = decode_shared(&encoded).expect("decodes");
        let range = encoded.as_ptr() as usize..encoded.as_ptr() as usize + encoded.len();
        assert!(range.contains(&(big.as_ptr() as usize)), "the large blob was copied");
        assert!(!range.contains(&(small.as_ptr() as usize)), "the small blob pins the message");
        assert_eq!((big.len(), &small[..]), (10_000, &b"abc"[..]));
        let (copied, _): (Blob, Blob) = decode(&encoded).expect("plain decoding works too");
        assert!(!range.contains(&(copied.as_ptr() as usize)));
        assert_eq!(copied, big);
    }

    #[test]
    fn blobs_are_msgpack_binary_like_byte_bufs() {
        let blob = rmp_serde::to_vec(&Blob::from(vec![1u8, 2, 3])).expect("encodes");
        assert_eq!(blob, [0xc4, 3, 1, 2, 3]);
        let back: Vec<u8> = Blob::from(vec![1, 2]).into();
        assert_eq!(back, [1, 2]);
    }
}
