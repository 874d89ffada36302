//! The task model: what a `#[task]` function becomes.
//!
//! A task is a plain Rust function compiled into both the submitting program and the worker
//! binary, called by name with MessagePack-encoded arguments. The `#[task]` attribute generates,
//! for each function, a zero-sized handle type implementing [`Task`] and a [`TaskEntry`] in the
//! global registry (see [`crate::registry`]).

use std::fmt::Display;

use blitzen_protocol::{DecodeError, Outcome};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

/// The typed handle of a task, implemented by `#[task]`; the dispatchers' `run` takes one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Blitzen task",
    label = "not a task",
    note = "add `#[blitzen::task]` above the function's definition: `run` takes the name of such \
            a function (and `blitzen::echo::<T>()`, `blitzen::sleep`, `blitzen::command`, \
            `blitzen::program`)"
)]
pub trait Task: Copy + Send + Sync + 'static {
    /// The argument type: `()` for no argument, the type itself for one, a tuple for several.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the task produces (the `T` of `Result<T, E>` for a fallible task).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The name the task is registered and called under.
    const NAME: &'static str;
    /// The signature as written, e.g. `fn square(u64) -> u64`, for error messages.
    const SIGNATURE: &'static str;
    /// [`fingerprint`] of [`Task::SIGNATURE`]: a worker refuses a call whose fingerprint differs
    /// from its own, so that two binaries built from different definitions never exchange
    /// garbage.
    const FINGERPRINT: u64;
    /// What each call asks for unless its `RunOptions` say otherwise
    /// (`#[task(cpus = 2, memory = "4GiB", resources(gpu = 1))]`); plain by default.
    const NEEDS: crate::needs::Needs = crate::needs::Needs::PLAIN;
}

/// One registered task, as seen by a worker process.
#[derive(Debug)]
pub struct TaskEntry {
    /// The registered name.
    pub name: &'static str,
    /// The module the task is declared in (`module_path!()`), e.g. `my_tasks::physics`.
    pub module: &'static str,
    /// The signature as written.
    pub signature: &'static str,
    /// [`fingerprint`] of the signature.
    pub fingerprint: u64,
    /// Decodes the arguments, calls the function and encodes its result. Panics propagate to the
    /// caller, which catches them.
    pub invoke: fn(&[u8]) -> Outcome,
}

inventory::collect!(TaskEntry);

/// FNV-1a hash of a signature: stable across builds, compilers and platforms.
pub const fn fingerprint(signature: &str) -> u64 {
    let bytes = signature.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Encodes task arguments or outputs: MessagePack with named fields.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    blitzen_protocol::frame::to_body(value).map(Bytes::from)
}

/// Decodes task arguments or outputs.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// [`decode_value`] where large [`Blob`](blitzen_protocol::Blob)s in the value share `bytes`
/// instead of being copied.
pub fn decode_shared_value<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, DecodeError> {
    blitzen_protocol::decode_shared(bytes)
}

/// Runs an infallible task function on encoded arguments (used by `#[task]`).
pub fn invoke_value<A, O, F>(args: &[u8], f: F) -> Outcome
where
    A: DeserializeOwned,
    O: Serialize,
    F: FnOnce(A) -> O,
{
    match decode_value::<A>(args) {
        Ok(args) => encode_output(&f(args)),
        Err(e) => Outcome::BadArguments { message: e.to_string() },
    }
}

/// Runs a fallible task function on encoded arguments (used by `#[task]`).
pub fn invoke_fallible<A, O, E, F>(args: &[u8], f: F) -> Outcome
where
    A: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(A) -> Result<O, E>,
{
    match decode_value::<A>(args) {
        Ok(args) => match f(args) {
            Ok(out) => encode_output(&out),
            Err(e) => Outcome::Returned { message: format!("{e:#}"), detail: None },
        },
        Err(e) => Outcome::BadArguments { message: e.to_string() },
    }
}

thread_local! {
    /// Where task outputs are encoded. The value handed out is a slice of this buffer; once the
    /// worker has sent it and dropped it, the next `reserve` takes the same memory back, so a task
    /// returning megabytes does not fault in a fresh buffer each time.
    static OUTPUT: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

fn encode_output<O: Serialize>(out: &O) -> Outcome {
    use bytes::BufMut;
    OUTPUT.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.reserve(64);
        let mut writer = (&mut *buf).writer();
        match rmp_serde::encode::write_named(&mut writer, out) {
            Ok(()) => Outcome::Value(buf.split().freeze()),
            Err(e) => {
                buf.clear();
                Outcome::BadOutput { message: e.to_string() }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_fnv1a() {
        assert_eq!(fingerprint(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fingerprint("fn f(u64) -> u64"), fingerprint("fn f(u32) -> u64"));
    }

    #[test]
    fn invoke_maps_each_way_a_call_can_end() {
        let args = encode_value(&(3u64, 4u64)).expect("encodes");
        let sum = invoke_value::<(u64, u64), _, _>(&args, |(a, b)| a + b);
        let Outcome::Value(v) = sum else { panic!("expected a value, got {sum:?}") };
        assert_eq!(decode_value::<u64>(&v).expect("decodes"), 7);

        let err = invoke_fallible::<(u64, u64), u64, _, _>(&args, |_| Err("nope"));
        assert_eq!(err, Outcome::Returned { message: "nope".into(), detail: None });

        let bad = invoke_value::<String, _, _>(&args, |s| s);
        assert!(matches!(bad, Outcome::BadArguments { .. }), "{bad:?}");
    }
}
