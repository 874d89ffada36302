//! A submission's arguments, argument by argument: each a value, or a stand-in for another
//! task's result that is put in its place before the task runs.
//!
//! `#[blitzen::task]` implements [`Accepts`] for each task: for `fn merge(a: Data, b: Data)`,
//! `merge` accepts any `(P0, P1)` where `P0: Input<Data>` and `P1: Input<Data>` — a `Data`, or
//! a handle of a task whose output is `Data`. The type check is the compiler's.
//!
//! The bytes of a task's arguments are the MessagePack encoding of its argument type: the type
//! itself for one argument, an array of the arguments for several. An array is its header
//! followed by its elements' encodings, so an argument can be encoded on its own and the
//! result of another task (the encoding of a value of the same type) spliced in its place:
//! [`Parts::splice`].

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::task::{Task, encode_value};

/// One argument of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A value, encoded.
    Value(Bytes),
    /// The result of the task `seq` of the dispatcher `origin`, once it has one.
    Result {
        /// Which dispatcher issued the handle.
        origin: u32,
        /// The task's number there.
        seq: u64,
    },
    /// A value that could not be encoded: why.
    Unencodable(String),
}

/// What can stand where a value of type `X` goes in a submission: an `X`, or a handle of a task
/// whose output is `X`.
pub trait Input<X> {
    /// This argument, as a part of the submission.
    fn part(self) -> Part;
}

impl<X: Serialize> Input<X> for X {
    fn part(self) -> Part {
        match encode_value(&self) {
            Ok(bytes) => Part::Value(bytes),
            Err(e) => Part::Unencodable(e.to_string()),
        }
    }
}

/// A task that accepts `P` as its arguments, argument by argument (see the module's text);
/// implemented by `#[blitzen::task]`.
pub trait Accepts<P>: Task {
    /// The parts of `inputs`.
    fn parts(inputs: P) -> Parts;
}

/// The arguments of one submission, argument by argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// Whether the arguments are an array of the parts (several arguments) rather than the one
    /// part itself.
    pub array: bool,
    /// The arguments, in order.
    pub parts: Vec<Part>,
}

impl Parts {
    /// A task of one argument.
    pub fn single(part: Part) -> Self {
        Self { array: false, parts: vec![part] }
    }

    /// A task of several arguments.
    pub fn array(parts: Vec<Part>) -> Self {
        Self { array: true, parts }
    }

    /// The encoded arguments, once every part is a value (`values`, in order: the parts'
    /// own values, and results put in for the others).
    pub fn splice(array: bool, values: &[Bytes]) -> Bytes {
        if !array {
            return values.first().cloned().unwrap_or_default();
        }
        let len: usize = values.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(len + 5);
        let n = values.len() as u32;
        match n {
            0..=15 => out.put_u8(0x90 | n as u8),
            16..=0xffff => {
                out.put_u8(0xdc);
                out.put_u16(n as u16);
            }
            _ => {
                out.put_u8(0xdd);
                out.put_u32(n);
            }
        }
        for v in values {
            out.extend_from_slice(v);
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::decode_value;

    fn value(part: Part) -> Bytes {
        match part {
            Part::Value(b) => b,
            other => panic!("not a value: {other:?}"),
        }
    }

    #[test]
    fn spliced_parts_are_the_encoding_of_the_whole() {
        let whole = encode_value(&(7u64, "seven".to_string(), vec![1.5f64, 2.5])).expect("encodes");
        let parts = [
            value(7u64.part()),
            value("seven".to_string().part()),
            value(vec![1.5f64, 2.5].part()),
        ];
        assert_eq!(Parts::splice(true, &parts), whole);
        let back: (u64, String, Vec<f64>) = decode_value(&whole).expect("decodes");
        assert_eq!(back.1, "seven");
        assert_eq!(Parts::splice(false, &[value(9u32.part())]), encode_value(&9u32).expect("9"));
    }

    #[test]
    fn long_argument_lists_get_a_longer_array_header() {
        let values: Vec<Bytes> = (0..20u8).map(|i| value(i.part())).collect();
        let whole = encode_value(&(0..20u8).collect::<Vec<_>>()).expect("encodes");
        assert_eq!(Parts::splice(true, &values), whole);
    }
}
