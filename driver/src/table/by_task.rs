//! [`ByTask`] and [`TaskSet`]: maps and sets keyed by task number, with a hash fit for them.

use std::collections::{HashMap, HashSet};

use blitzen_protocol::ids::{DriverTaskId, IdHash};

/// A map keyed by task: task numbers are dense and not chosen by anyone hostile, so a
/// multiply-and-rotate hash serves (SipHash, the default, is several times slower per lookup,
/// and a stream of 100,000 results makes two lookups per result).
pub(crate) type ByTask<V> = HashMap<DriverTaskId, V, IdHash>;
/// A set of tasks (see [`ByTask`]).
pub(crate) type TaskSet = HashSet<DriverTaskId, IdHash>;
