//! A task's inputs from other tasks, on the wire: how its arguments are made of parts, some of
//! which are other tasks' results ([`Inputs`]), and [`splice`], which makes the arguments once
//! every part is a value. The driver sends a task with inputs; the server holds it until they
//! are in, splices them and queues it.
//!
//! The bytes of a task's arguments are the MessagePack encoding of its argument type: the type
//! itself for one argument, an array of the arguments for several. An array is its header
//! followed by its elements' encodings, so an argument can be encoded on its own and the result
//! of another task (the encoding of a value of the same type) spliced in its place.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::DriverTaskId;

/// How the parts of a submission make its encoded arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Framing {
    /// One argument: the one part itself.
    Single,
    /// Several arguments: a MessagePack array of the parts.
    Array,
    /// `head`, then each part as its length (`u32`, little-endian) and its bytes: for tasks
    /// whose arguments are not MessagePack (the Python package's calls).
    Prefixed(#[serde(deserialize_with = "crate::frame::shared_bytes")] Bytes),
}

/// The encoded arguments made of `values`, the parts in order, as `framing` says; a single
/// argument is its part itself, not a copy.
pub fn splice(framing: &Framing, values: &[Bytes]) -> Bytes {
    if let Framing::Single = framing {
        return values.first().cloned().unwrap_or_default();
    }
    let slices: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
    splice_slices(framing, &slices)
}

/// [`splice`] of parts held anywhere (copied).
pub fn splice_slices(framing: &Framing, values: &[&[u8]]) -> Bytes {
    let len: usize = values.iter().map(|v| v.len()).sum();
    let n = match framing {
        Framing::Single => {
            return Bytes::copy_from_slice(values.first().copied().unwrap_or_default());
        }
        Framing::Prefixed(head) => {
            let mut out = BytesMut::with_capacity(head.len() + len + 4 * values.len());
            out.extend_from_slice(head);
            for v in values {
                out.put_u32_le(v.len() as u32);
                out.extend_from_slice(v);
            }
            return out.freeze();
        }
        Framing::Array => values.len() as u32,
    };
    let mut out = BytesMut::with_capacity(len + 5);
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

/// One argument of a task with inputs. Which kinds travel where: from a driver to the server,
/// values, results and shared values by the driver's number; from the server to an agent,
/// values and shared values by the server's key; from an agent to a worker, values and files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputPart {
    /// A value, encoded.
    Value(#[serde(deserialize_with = "crate::frame::shared_bytes")] Bytes),
    /// The value of the same session's task with this id, once it has one.
    Result(DriverTaskId),
    /// A shared value (the driver's number for it, or the server's key), stored apart and sent
    /// to each agent once.
    Shared(u64),
    /// A shared value in the file at this path, for the worker to map.
    File(String),
}

/// What a task waits for before it can run: other tasks' results among its arguments, and
/// other tasks' ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// How `parts` make its arguments.
    pub framing: Framing,
    /// Its arguments, in order.
    pub parts: Vec<InputPart>,
    /// Tasks it runs after without taking their results: `(id, any)`, `any` when it runs
    /// whatever their outcome, else only once they succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<(DriverTaskId, bool)>,
}

impl Inputs {
    /// Whether nothing is waited for: every part is a value, or a shared value.
    pub fn is_ready(&self) -> bool {
        self.after.is_empty() && !self.parts.iter().any(|p| matches!(p, InputPart::Result(_)))
    }

    /// Whether a part is a shared value or a file: then the arguments are made where the task
    /// runs, not spliced on the way.
    pub fn has_shared(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, InputPart::Shared(_) | InputPart::File(_)))
    }

    /// The shared values it takes (their numbers or keys), in order.
    pub fn shared(&self) -> impl Iterator<Item = u64> + '_ {
        self.parts.iter().filter_map(|p| match p {
            InputPart::Shared(n) => Some(*n),
            _ => None,
        })
    }

    /// The tasks waited for: each result part's and each `after` task's id, with what is
    /// waited for of it.
    pub fn waits(&self) -> impl Iterator<Item = (DriverTaskId, Wait)> + '_ {
        let results = self.parts.iter().enumerate().filter_map(|(i, p)| match p {
            InputPart::Result(id) => Some((*id, Wait::Input(i))),
            _ => None,
        });
        let after = self
            .after
            .iter()
            .map(|&(id, any)| (id, if any { Wait::AfterAny } else { Wait::After }));
        results.chain(after)
    }

    /// The encoded arguments, once [`is_ready`](Self::is_ready) and without shared parts.
    pub fn spliced(&self) -> Bytes {
        let values: Vec<Bytes> = (self.parts.iter())
            .map(|p| match p {
                InputPart::Value(bytes) => bytes.clone(),
                _ => Bytes::new(),
            })
            .collect();
        splice(&self.framing, &values)
    }

    /// The bytes of its values.
    pub fn values_len(&self) -> usize {
        (self.parts.iter())
            .map(|p| match p {
                InputPart::Value(bytes) => bytes.len(),
                _ => 0,
            })
            .sum()
    }

    /// The task `id` ended with `value` (`None`: it failed): what it was waited for is met.
    /// Returns whether the wait was met (`false`: a failure where success was required).
    pub fn meet(&mut self, id: DriverTaskId, wait: Wait, value: Option<&Bytes>) -> bool {
        match (wait, value) {
            (Wait::Input(i), Some(bytes)) => {
                if let Some(part) = self.parts.get_mut(i) {
                    *part = InputPart::Value(bytes.clone());
                }
                true
            }
            (wait, value) => meet_after(&mut self.after, id, wait, value.is_some()),
        }
    }
}

/// What [`Inputs::meet`] does with a wait that is not for an argument: task `id` ended
/// (`succeeded` or not); an `after` edge it meets is taken out of `after`. Returns whether the
/// wait was met (`false`: a failure where success was required, or a failed argument).
pub fn meet_after(
    after: &mut Vec<(DriverTaskId, bool)>,
    id: DriverTaskId,
    wait: Wait,
    succeeded: bool,
) -> bool {
    match (wait, succeeded) {
        (Wait::After, true) | (Wait::AfterAny, _) => {
            let any = wait == Wait::AfterAny;
            if let Some(at) = after.iter().position(|&(on, a)| on == id && a == any) {
                after.swap_remove(at);
            }
            true
        }
        _ => false,
    }
}

/// What a waiting task waits for from one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its result, for the argument at this index.
    Input(usize),
    /// Its success.
    After,
    /// Its end, whatever the outcome.
    AfterAny,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(v: &T) -> Bytes {
        Bytes::from(rmp_serde::to_vec(v).expect("encodes"))
    }

    #[test]
    fn spliced_parts_are_the_encoding_of_the_whole() {
        let whole = encode(&(7u64, "seven".to_string(), vec![1.5f64, 2.5]));
        let parts = [encode(&7u64), encode(&"seven"), encode(&vec![1.5f64, 2.5])];
        assert_eq!(splice(&Framing::Array, &parts), whole);
        assert_eq!(splice(&Framing::Single, &[encode(&9u32)]), encode(&9u32));
        let head = Bytes::from_static(b"hd");
        let prefixed = splice(&Framing::Prefixed(head), &[Bytes::from_static(b"abc")]);
        assert_eq!(&prefixed[..], b"hd\x03\x00\x00\x00abc");
        let values: Vec<Bytes> = (0..20u8).map(|i| encode(&i)).collect();
        assert_eq!(splice(&Framing::Array, &values), encode(&(0..20u8).collect::<Vec<_>>()));
    }

    #[test]
    fn one_argument_is_its_part_itself_not_a_copy() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let args = splice(&Framing::Single, std::slice::from_ref(&big));
        assert_eq!(args.as_ptr(), big.as_ptr());
    }

    #[test]
    fn inputs_are_met_one_wait_at_a_time_and_a_failure_is_not_met() {
        let (a, b, c) = (DriverTaskId::new(1), DriverTaskId::new(2), DriverTaskId::new(3));
        let mut inputs = Inputs {
            framing: Framing::Array,
            parts: vec![InputPart::Result(a), InputPart::Value(encode(&2u8))],
            after: vec![(b, false), (c, true)],
        };
        let waits: Vec<_> = inputs.waits().collect();
        assert_eq!(waits, [(a, Wait::Input(0)), (b, Wait::After), (c, Wait::AfterAny)]);
        assert!(inputs.meet(c, Wait::AfterAny, None), "after_any takes a failure");
        assert!(!inputs.meet(b, Wait::After, None), "after does not");
        assert!(inputs.meet(b, Wait::After, Some(&Bytes::new())));
        assert!(!inputs.is_ready());
        assert!(inputs.meet(a, Wait::Input(0), Some(&encode(&1u8))));
        assert!(inputs.is_ready());
        assert_eq!(inputs.spliced(), encode(&(1u8, 2u8)));
        let wire = crate::frame::to_body(&inputs).expect("encodes");
        let back: Inputs = crate::frame::decode_shared(&Bytes::from(wire)).expect("decodes");
        assert_eq!(back, inputs);
    }
}
