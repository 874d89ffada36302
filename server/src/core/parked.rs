//! [`ParkedInputs`]: a waiting task's inputs as the server holds them until they are in — the
//! [`Inputs`] of its submission in a third of the memory, since every byte here is paid once per
//! task waiting (a reduction over a million leaves holds tens of thousands of them at once).
//!
//! A part is sixteen bytes instead of forty; a small value (most results of a reduction) is kept
//! in the part itself, and a value of up to [`COPIED`] bytes is copied out of the frame it came
//! in, so that a waiting task never keeps a whole batch of results alive for a few bytes of it.

use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::inputs::{Framing, InputPart, Inputs, Wait, meet_after, splice_slices};
use bytes::Bytes;

/// A value this long or shorter is kept in its part.
const SMALL: usize = 14;

/// A longer value this long or shorter is copied, not kept as a slice of the frame it came in.
const COPIED: usize = 1024;

/// A waiting task's inputs: see the module's text.
#[derive(Debug)]
pub(super) struct ParkedInputs {
    framing: Framing,
    parts: Box<[Part]>,
    after: Vec<(DriverTaskId, bool)>,
}

#[derive(Debug)]
enum Part {
    /// The result of the same session's task with this id, once it has one.
    Waiting(DriverTaskId),
    /// A value of up to [`SMALL`] bytes, in place.
    Small { len: u8, bytes: [u8; SMALL] },
    /// A longer value.
    Value(Box<Bytes>),
    /// A shared value, by the number its driver gave it.
    Shared(u64),
    /// A shared value in a file.
    // Boxed: a `String` inline would make every part, small values too, sixteen bytes larger.
    #[allow(clippy::box_collection)]
    File(Box<String>),
}

impl Part {
    fn value(bytes: &Bytes) -> Self {
        if bytes.len() <= SMALL {
            let mut small = [0; SMALL];
            small[..bytes.len()].copy_from_slice(bytes);
            return Part::Small { len: bytes.len() as u8, bytes: small };
        }
        let kept = match bytes.len() <= COPIED {
            true => Bytes::copy_from_slice(bytes),
            false => bytes.clone(),
        };
        Part::Value(Box::new(kept))
    }

    fn from_input(part: InputPart) -> Self {
        match part {
            InputPart::Value(bytes) => Part::value(&bytes),
            InputPart::Result(id) => Part::Waiting(id),
            InputPart::Shared(n) => Part::Shared(n),
            InputPart::File(path) => Part::File(Box::new(path)),
        }
    }

    fn to_input(&self) -> InputPart {
        match self {
            Part::Waiting(id) => InputPart::Result(*id),
            Part::Small { .. } | Part::Value(_) => InputPart::Value(match self.bytes() {
                Some(Value::Slice(s)) => Bytes::copy_from_slice(s),
                Some(Value::Whole(b)) => b.clone(),
                None => Bytes::new(),
            }),
            Part::Shared(n) => InputPart::Shared(*n),
            Part::File(path) => InputPart::File(String::clone(path)),
        }
    }

    fn bytes(&self) -> Option<Value<'_>> {
        match self {
            Part::Small { len, bytes } => Some(Value::Slice(&bytes[..usize::from(*len)])),
            Part::Value(bytes) => Some(Value::Whole(bytes)),
            _ => None,
        }
    }
}

enum Value<'a> {
    Slice(&'a [u8]),
    Whole(&'a Bytes),
}

impl From<Inputs> for ParkedInputs {
    fn from(inputs: Inputs) -> Self {
        let parts = inputs.parts.into_iter().map(Part::from_input).collect();
        Self { framing: inputs.framing, parts, after: inputs.after }
    }
}

impl ParkedInputs {
    /// The inputs as submitted, with the values in so far in place of what they met.
    pub(super) fn to_inputs(&self) -> Inputs {
        Inputs {
            framing: self.framing.clone(),
            parts: self.parts.iter().map(Part::to_input).collect(),
            after: self.after.clone(),
        }
    }

    /// The tasks waited for, and what is waited for of each: see [`Inputs::waits`].
    pub(super) fn waits(&self) -> Vec<(DriverTaskId, Wait)> {
        let results = self.parts.iter().enumerate().filter_map(|(i, p)| match p {
            Part::Waiting(id) => Some((*id, Wait::Input(i))),
            _ => None,
        });
        let after = (self.after.iter())
            .map(|&(id, any)| (id, if any { Wait::AfterAny } else { Wait::After }));
        results.chain(after).collect()
    }

    /// Whether a part is a shared value: then the arguments are made where the task runs.
    pub(super) fn has_shared(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Shared(_) | Part::File(_)))
    }

    /// Task `id` ended with `value` (`None`: it failed): see [`Inputs::meet`].
    pub(super) fn meet(&mut self, id: DriverTaskId, wait: Wait, value: Option<&Bytes>) -> bool {
        match (wait, value) {
            (Wait::Input(i), Some(bytes)) => {
                if let Some(part) = self.parts.get_mut(i) {
                    *part = Part::value(bytes);
                }
                true
            }
            (wait, value) => meet_after(&mut self.after, id, wait, value.is_some()),
        }
    }

    /// The encoded arguments, once every wait is met and without shared parts; a single
    /// argument kept whole is the arguments themselves, not a copy.
    pub(super) fn spliced(&self) -> Bytes {
        if let (Framing::Single, [Part::Value(bytes)]) = (&self.framing, &*self.parts) {
            return Bytes::clone(bytes);
        }
        let values: Vec<&[u8]> = (self.parts.iter())
            .map(|p| match p.bytes() {
                Some(Value::Slice(s)) => s,
                Some(Value::Whole(b)) => &b[..],
                None => &[],
            })
            .collect();
        splice_slices(&self.framing, &values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(v: &T) -> Bytes {
        Bytes::from(rmp_serde::to_vec(v).expect("encodes"))
    }

    /// Sixteen bytes a part: a reduction's waiting task of sixteen inputs holds 256 bytes of
    /// them, not 640.
    #[test]
    fn a_part_stays_small() {
        assert!(std::mem::size_of::<Part>() <= 16, "{} bytes", std::mem::size_of::<Part>());
    }

    #[test]
    fn parked_inputs_splice_as_the_submitted_ones_would() {
        let (a, b) = (DriverTaskId::new(1), DriverTaskId::new(2));
        let long = "x".repeat(100);
        let huge = Bytes::from(vec![7u8; 4 * COPIED]);
        let inputs = Inputs {
            framing: Framing::Array,
            parts: vec![
                InputPart::Result(a),
                InputPart::Value(encode(&2u8)),
                InputPart::Result(b),
                InputPart::Value(encode(&long)),
            ],
            after: vec![(DriverTaskId::new(3), true)],
        };
        let mut parked = ParkedInputs::from(inputs.clone());
        assert_eq!(parked.to_inputs(), inputs, "nothing lost on the way in");
        assert_eq!(parked.waits(), inputs.waits().collect::<Vec<_>>());
        assert!(parked.meet(a, Wait::Input(0), Some(&encode(&1u64))));
        assert!(parked.meet(b, Wait::Input(2), Some(&encode(&u64::MAX))));
        assert!(parked.meet(DriverTaskId::new(3), Wait::AfterAny, None));
        assert!(!parked.meet(a, Wait::After, None), "a failure meets no wait for success");
        assert_eq!(parked.spliced(), encode(&(1u64, 2u8, u64::MAX, long)));

        let single =
            Inputs { framing: Framing::Single, parts: vec![InputPart::Result(a)], after: vec![] };
        let mut parked = ParkedInputs::from(single);
        parked.meet(a, Wait::Input(0), Some(&huge));
        assert_eq!(
            parked.spliced().as_ptr(),
            huge.as_ptr(),
            "a large single argument is not copied"
        );
    }
}
