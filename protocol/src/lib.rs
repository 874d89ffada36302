//! Blitzen's wire format: what travels between processes, and nothing about what to do with it.
//!
//! - [`frame`]: every message is one *frame*, a 4-byte big-endian length followed by that many
//!   bytes of MessagePack. [`frame::decode_frame`] is the single decoding core; the blocking
//!   [`frame::FrameReader`] and the async [`frame::FrameCodec`] (a `tokio_util` codec) both use it,
//!   so both ends enforce the same [`frame::MAX_FRAME_LEN`].
//! - [`inputs`]: a task's inputs from other tasks, and how its arguments are spliced from them.
//! - [`ids`]: the ids on the wire, one type each ([`TaskKey`], [`DriverTaskId`], [`ConnId`]…).
//! - [`finished`]: [`Finished`], how one run of a task ended (its [`Outcome`], its [`Captured`]
//!   output, its run time), and [`Report`], the one record every hop of a finished task carries
//!   (the task's id at that hop, its worker, its `Finished`).
//! - [`worker`]: the messages between a process pool and its worker processes ([`ToWorker`],
//!   [`FromWorker`]).
//! - [`output`]: the lines tasks print while they run ([`Lines`]), on their way to the driver,
//!   and the one counter of those left out of a stream ([`Unstreamed`]).
//! - [`priority`]: which waiting task starts first, and how long a low one may wait.
//! - [`devices`]: the devices of counted resources (`gpu=0,1`), offered and given to tasks.
//! - [`resources`]: what a task asks for ([`Request`]), what a machine offers ([`Capacity`]),
//!   what is in use ([`Usage`]).
//! - [`size`]: sizes as people write them (`4GiB`), read and shown.
//! - [`status`]: what the server tells observers (`status --json`, the dashboard).
//! - [`cluster`]: the messages between the server, its agents and drivers, after a
//!   [`cluster::Hello`] handshake.
//! - `blob` (re-exported): [`Blob`], binary task data that is not copied on arrival.
//!
//! Messages are encoded with named fields ([`frame::encode`]), so a field added later with
//! `#[serde(default)]` does not break an older peer. Payloads (task arguments and results) are
//! `bytes::Bytes`, which MessagePack carries as binary, never as a list of integers.

mod blob;
pub mod cluster;
pub mod devices;
pub mod finished;
pub mod frame;
pub mod ids;
pub mod inputs;
pub mod output;
pub mod priority;
pub mod resources;
pub mod size;
pub mod status;
pub mod worker;

pub use blob::Blob;
pub use finished::{Captured, ExitReason, Finished, Outcome, Report, WorkerInfo};
pub use frame::{
    BATCH_BYTES, DecodeError, EncodeError, FrameCodec, FrameError, FrameReader, MAX_FRAME_LEN,
    MAX_PAYLOAD_LEN, by_size, decode_shared,
};
pub use ids::{ConnId, DriverTaskId, JobId, KindIndex, ServerId, TaskKey};
pub use output::{Lines, StdStream, Unstreamed};
pub use resources::{Capacity, Request, Usage};
pub use size::{SizeError, SizeText, parse_size};
pub use worker::{FromWorker, RunTask, ToWorker, WORKER_PROTOCOL_VERSION, WorkerReady};
