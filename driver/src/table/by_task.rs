//! [`ByTask`] and [`TaskSet`]: maps and sets keyed by task number, with a hash fit for them.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use blitzen_protocol::ids::DriverTaskId;

/// A map keyed by task: task numbers are dense and not chosen by anyone hostile, so a
/// multiply-and-rotate hash serves (SipHash, the default, is several times slower per lookup,
/// and a stream of 100,000 results makes two lookups per result).
pub(crate) type ByTask<V> = HashMap<DriverTaskId, V, BuildHasherDefault<TaskHasher>>;
/// A set of tasks (see [`ByTask`]).
pub(crate) type TaskSet = HashSet<DriverTaskId, BuildHasherDefault<TaskHasher>>;

/// The hasher of [`ByTask`]: Fibonacci hashing of the task number.
#[derive(Debug, Default)]
pub(crate) struct TaskHasher(u64);

impl Hasher for TaskHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
