//! The ids that travel on the wire, each its own type so that two numbers of different meaning
//! cannot be swapped by accident. Each encodes as the bare integer (`#[serde(transparent)]`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines a `Copy` newtype id over an integer, with `new`, `get`, `Display` and a transparent
/// serde form.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($int);

        impl $name {
            /// The id with this number.
            pub const fn new(n: $int) -> Self {
                Self(n)
            }

            /// Its number.
            pub const fn get(self) -> $int {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type! {
    /// A job of a process pool: chosen by whoever submits it (a dispatcher's task number, or
    /// an agent's [`TaskKey`]) and echoed in the job's answer.
    JobId(u64)
}

id_type! {
    /// The server's key of a task: names the task between the server and the agent running it.
    /// A key outlives its task harmlessly: the server never hands the same key to a later task.
    TaskKey(u64)
}

id_type! {
    /// A driver's own number for one of its tasks (its dispatcher's task number): names the
    /// task between the driver and the server.
    DriverTaskId(u64)
}

id_type! {
    /// One accepted connection of a server, unique for the life of the server.
    ConnId(u64)
}

id_type! {
    /// A position in the table of task kinds a connection has declared: a driver's
    /// submissions, and the server's assignments to an agent, name their kind by it.
    KindIndex(u32)
}

id_type! {
    /// One run of a server, random at each start: an agent that reconnects to the same run may
    /// deliver what it finished while disconnected.
    ServerId(u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_as_bare_integers() {
        let key = TaskKey::new(300);
        assert_eq!(
            rmp_serde::to_vec(&key).expect("encodes"),
            rmp_serde::to_vec(&300u64).expect("encodes")
        );
        let back: TaskKey = rmp_serde::from_slice(&[0xcd, 1, 44]).expect("decodes");
        assert_eq!((back, back.get(), back.to_string()), (key, 300, "300".to_string()));
        assert_eq!(format!("{:?}", KindIndex::new(2)), "KindIndex(2)");
    }
}

/// A hasher for maps keyed by ids (or small tuples of them): Fibonacci hashing of each integer
/// written. Ids are dense and issued by Blitzen's own programs, so this serves where SipHash,
/// the default, costs several times more per lookup on paths taken once per task.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
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

/// What makes an [`IdHasher`], for `HashMap::with_hasher`.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;
