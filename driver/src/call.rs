//! [`Call`]: one submitted task as a backend receives it.

use std::sync::Arc;
use std::time::Duration;

use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::inputs::Inputs;
use blitzen_protocol::{Outcome, Request};
use bytes::Bytes;

/// One submitted call, as a backend receives it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Call {
    /// The dispatcher's number of the task.
    pub id: DriverTaskId,
    pub name: &'static str,
    pub signature: &'static str,
    pub fingerprint: u64,
    /// MessagePack-encoded arguments.
    pub args: Bytes,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub unrunnable_limit: Option<Duration>,
    /// What it holds while it runs; `None`: plain (one CPU).
    pub request: Option<Arc<Request>>,
    /// What people see it as, when not its name (`RunOptions::with_label`).
    pub label: Option<&'static str>,
    /// Whether its lines are sent as it prints them ([`Dispatcher::with_output`]).
    pub stream: bool,
    /// Among the tasks waiting to start, higher first (0 unless said).
    pub priority: i32,
    /// What it waits for, when the backend holds it until then
    /// ([`Backend::holds_inputs`](crate::Backend::holds_inputs)); `args` is empty then.
    pub inputs: Option<Box<Inputs>>,
}

impl Call {
    /// The bytes of its arguments, or of the values among its inputs.
    pub fn payload_len(&self) -> usize {
        let values = self.inputs.iter().flat_map(|i| i.parts.iter()).map(|p| match p {
            blitzen_protocol::inputs::InputPart::Value(bytes) => bytes.len(),
            _ => 0,
        });
        self.args.len() + values.sum::<usize>()
    }

    /// A call of task `name` with no arguments and every option at its default, for tests.
    #[cfg(test)]
    pub(crate) fn plain(id: DriverTaskId, name: &'static str, signature: &'static str) -> Self {
        Call {
            id,
            name,
            signature,
            fingerprint: 1,
            args: Bytes::new(),
            timeout: None,
            retries: 0,
            unrunnable_limit: None,
            request: None,
            label: None,
            stream: false,
            priority: 0,
            inputs: None,
        }
    }
}

/// A value stored by the backend to be shared among tasks ([`Backend::share`]): its number
/// there, and what tells the backend it is no longer shared (called once, when the last handle
/// goes).
///
/// [`Backend::share`]: crate::Backend::share
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Stored {
    pub id: u64,
    pub unshare: Box<dyn Fn(u64) + Send + Sync>,
}

/// What sends a task the result table released once its inputs came in, from whatever thread
/// completed them ([`Backend::releaser`](crate::Backend::releaser)): `Err` with the outcome to
/// settle the task with when the backend has stopped.
#[doc(hidden)]
pub type Releaser = Box<dyn Fn(Call) -> Result<(), Outcome> + Send + Sync>;
