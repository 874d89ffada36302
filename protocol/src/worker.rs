//! Messages between a process pool (in a dispatcher or a client agent) and its worker processes.
//!
//! The pool writes [`ToWorker`] frames to the worker's private socket; the worker answers with
//! one [`FromWorker::Ready`] when it has started, then one [`FromWorker::Done`] per task, in the
//! order the tasks arrived, and for a streamed task ([`RunTask::stream`]) any number of
//! [`FromWorker::Output`] before its `Done`. Before the first frame, the socket carries one
//! byte with descriptors attached: a shared file where the worker counts the tasks it has
//! started, and the two pipes its streamed tasks write to.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::finished::Report;
use crate::ids::JobId;
use crate::output::Lines;
use crate::resources::Request;

/// Bumped whenever a message below changes incompatibly.
pub const WORKER_PROTOCOL_VERSION: u32 = 5;

/// Pool → worker. The pool sends `ToWorker<&RunTask>`, its own task by reference: the same
/// bytes as the owned `ToWorker` the worker reads, without copying a name or arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker<R = RunTask> {
    /// Run one task. Tasks are run one at a time, in arrival order.
    Run(R),
}

/// One task for a pool to run, and for its worker: the worker is sent what it needs to run the
/// task (id, name, fingerprint, arguments, memory limit, whether to stream); the settings the
/// pool keeps to supervise it (timeout, retries, group, request) are not sent, and read back as
/// their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    /// The id the pool uses to match the answer.
    pub id: JobId,
    /// The registered task name (borrowed for the static names of compiled tasks).
    pub name: Cow<'static, str>,
    /// Fingerprint of the task signature the submitter was compiled with.
    pub fingerprint: u64,
    /// MessagePack-encoded arguments.
    #[serde(deserialize_with = "crate::frame::shared_bytes")]
    pub args: Bytes,
    /// Its arguments part by part when some are files of shared values
    /// ([`InputPart::File`](crate::inputs::InputPart)), which the worker maps instead of
    /// receiving them through its pipe; `args` is empty then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<crate::inputs::Inputs>>,
    /// The most memory the task may use, in bytes: the worker limits itself to it while the
    /// task runs. Left off the wire when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Send what the task prints as it comes ([`FromWorker::Output`]), not only in its result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The devices of counted resources the pool gave it, by resource: the worker names them
    /// in the task's environment (`BLITZEN_RESOURCE_GPU=1`, and `CUDA_VISIBLE_DEVICES` for
    /// `gpu`).
    #[serde(default, skip_serializing_if = "crate::devices::Devices::is_empty")]
    pub devices: crate::devices::Devices,
    /// The pool's: limit on the run time, counted from the start on a worker.
    #[serde(skip)]
    pub timeout: Option<Duration>,
    /// The pool's: times to run it again (on a fresh worker) when it crashes its worker or
    /// times out.
    #[serde(skip)]
    pub retries: u32,
    /// The pool's: which calls of the task it is like, for the run-time estimates that decide
    /// prefetching; 0 by default.
    #[serde(skip)]
    pub group: u64,
    /// The pool's: what it holds while it runs, beyond a plain task's one CPU (`None`: plain).
    /// It starts only on an idle worker, once the pool's free capacity covers it; its memory is
    /// also its limit ([`RunTask::memory_limit`], set with it by [`RunTask::holding`]).
    #[serde(skip)]
    pub request: Option<Arc<Request>>,
    /// The pool's: which waiting job starts first (see [`priority`](crate::priority)); 0 by
    /// default.
    #[serde(skip)]
    pub priority: i32,
}

impl RunTask {
    /// A plain task (one CPU, no timeout, no retries, group 0).
    pub fn new(
        id: JobId,
        name: impl Into<Cow<'static, str>>,
        fingerprint: u64,
        args: Bytes,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            fingerprint,
            args,
            inputs: None,
            memory_limit: None,
            stream: false,
            timeout: None,
            retries: 0,
            group: 0,
            request: None,
            priority: 0,
            devices: crate::devices::Devices::default(),
        }
    }

    /// The same task holding `request` while it runs, its memory its limit.
    pub fn holding(self, request: Option<Arc<Request>>) -> Self {
        let memory_limit = request.as_ref().and_then(|r| r.memory);
        Self { request, memory_limit, ..self }
    }
}

/// Worker → pool.
// Messages are decoded and consumed at once; boxing `Done` would cost an allocation per task.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent once, after start-up, before any task.
    Ready(WorkerReady),
    /// A task finished (in any way the worker could observe); the worker leaves
    /// [`Report::worker`] off, the pool knows it.
    Done(Report<JobId>),
    /// Lines a streamed task printed, while it runs.
    Output {
        /// The [`RunTask::id`] of the task.
        id: JobId,
        /// What it printed.
        lines: Lines,
    },
}

/// The worker's start-up announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReady {
    /// The worker's process id.
    pub pid: u32,
    /// [`WORKER_PROTOCOL_VERSION`] of the worker.
    pub version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finished::strategies::{bytes, finished};
    use crate::frame::{decode, decode_frame, encode};
    use crate::output::StdStream;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn to_worker() -> impl Strategy<Value = ToWorker> {
        (
            any::<u64>(),
            any::<String>(),
            any::<u64>(),
            bytes(),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
        )
            .prop_map(|(id, name, fingerprint, args, memory_limit, stream)| {
                let id = JobId::new(id);
                let task =
                    RunTask { memory_limit, stream, ..RunTask::new(id, name, fingerprint, args) };
                ToWorker::Run(task)
            })
    }

    fn from_worker() -> impl Strategy<Value = FromWorker> {
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(pid, version)| FromWorker::Ready(WorkerReady { pid, version })),
            (any::<u64>(), finished()).prop_map(|(id, run)| FromWorker::Done(Report {
                id: JobId::new(id),
                worker: None,
                run
            })),
            (any::<u64>(), any::<bool>(), bytes()).prop_map(|(id, err, text)| {
                let stream = if err { StdStream::Stderr } else { StdStream::Stdout };
                FromWorker::Output { id: JobId::new(id), lines: Lines { stream, text } }
            }),
        ]
    }

    fn round_trip<M>(msg: &M) -> M
    where
        M: Serialize + serde::de::DeserializeOwned,
    {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf).expect("encodes");
        let body = decode_frame(&mut buf, usize::MAX).expect("valid").expect("complete");
        assert!(buf.is_empty());
        decode(&body).expect("decodes")
    }

    proptest! {
        #[test]
        fn to_worker_round_trips(msg in to_worker()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn from_worker_round_trips(msg in from_worker()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn random_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<FromWorker>(&data);
            let _ = decode::<ToWorker>(&data);
        }
    }

    #[test]
    fn borrowed_task_encodes_like_the_owned_one() {
        let args = Bytes::from_static(b"\x93\x01\x02\x03");
        let id = JobId::new(9);
        for (memory_limit, stream) in [(None, false), (Some(1 << 20), true)] {
            let task = RunTask::new(id, "sq", 5, args.clone());
            let owned = ToWorker::Run(RunTask { memory_limit, stream, ..task });
            let ToWorker::Run(task) = &owned;
            let borrowed: ToWorker<&RunTask> = ToWorker::Run(task);
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            encode(&owned, &mut a).expect("encodes");
            encode(&borrowed, &mut b).expect("encodes");
            assert_eq!(a, b);
            let back: ToWorker = decode_frame(&mut b, usize::MAX)
                .ok()
                .flatten()
                .and_then(|body| decode(&body).ok())
                .expect("decodes");
            assert_eq!(back, owned);
            assert_eq!(memory_limit.is_none(), !String::from_utf8_lossy(&a).contains("memory"));
        }
    }

    #[test]
    fn payloads_travel_as_binary_not_integer_lists() {
        let args = Bytes::from(vec![200u8; 1000]);
        let msg = ToWorker::Run(RunTask::new(JobId::new(1), "t", 2, args));
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).expect("encodes");
        // 1000 bytes as a list of integers would take 2000 bytes.
        assert!(buf.len() < 1100, "frame is {} bytes", buf.len());
    }
}
