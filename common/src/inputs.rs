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

pub use blitzen_protocol::inputs::Framing;
use bytes::Bytes;
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
    /// A value shared among tasks, stored apart by what runs them under the number `id`
    /// (a cluster sends it to each machine once); `bytes` is the value itself.
    Shared {
        /// What runs the tasks knows the value by this number.
        id: u64,
        /// The value, encoded.
        bytes: Bytes,
    },
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
    /// How the parts make the arguments.
    pub framing: Framing,
    /// The arguments, in order.
    pub parts: Vec<Part>,
}

impl Parts {
    /// A task of one argument.
    pub fn single(part: Part) -> Self {
        Self { framing: Framing::Single, parts: vec![part] }
    }

    /// A task of several arguments.
    pub fn array(parts: Vec<Part>) -> Self {
        Self { framing: Framing::Array, parts }
    }

    /// The encoded arguments, once every part is a value (`values`, in order: the parts'
    /// own values, and results put in for the others).
    pub fn splice(framing: &Framing, values: &[Bytes]) -> Bytes {
        blitzen_protocol::inputs::splice(framing, values)
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
        assert_eq!(Parts::splice(&Framing::Array, &parts), whole);
        let back: (u64, String, Vec<f64>) = decode_value(&whole).expect("decodes");
        assert_eq!(back.1, "seven");
        let single = Parts::splice(&Framing::Single, &[value(9u32.part())]);
        assert_eq!(single, encode_value(&9u32).expect("9"));
        let head = Bytes::from_static(b"hd");
        let prefixed = Parts::splice(&Framing::Prefixed(head), &[Bytes::from_static(b"abc")]);
        assert_eq!(&prefixed[..], b"hd\x03\x00\x00\x00abc");
    }
}
