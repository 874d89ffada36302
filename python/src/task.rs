//! The `python` task: how a Python call travels and runs.
//!
//! The driver pickles `(function, args, kwargs)` (with cloudpickle, so lambdas, closures and
//! functions of `__main__` travel by value) and submits it as the `python` task, after an
//! 8-byte header: the function's group (a hash of its name), so that the pool estimates each
//! function's run time on its own and never queues a call behind a long one it took for short. The server never
//! looks inside. A worker process — a Python interpreter started by the Rust pool, running
//! Blitzen's worker loop through [`worker_main`] — hands the pickle to the package's
//! `blitzen._worker.execute`, which unpickles and calls it and answers with a code:
//!
//! | code | meaning | data | text |
//! |---|---|---|---|
//! | 0 | returned | the pickled value | — |
//! | 1 | raised | the pickled exception, if it pickles | the traceback |
//! | 2 | cannot unpickle the call | — | why |
//! | 3 | cannot pickle the value | — | why |
//! | 4 | raised `MemoryError` | as for 1 | as for 1 |
//!
//! A `MemoryError` is reported as raised; under a memory limit the worker turns it into
//! `MemoryExceeded` (see `blitzen_common::worker::note_out_of_memory`).
//!
//! The task's signature names the interpreter, cloudpickle, the pickle protocol and the package
//! version. A worker or an agent with other versions has another fingerprint, so it never runs
//! a pickle it may misread: the server tells the driver which versions its agents have.

use std::sync::OnceLock;

use blitzen::NamedTask;
use blitzen_common::inputs::{Framing, Part, Parts};
use blitzen_common::registry;
use blitzen_common::task::{TaskEntry, fingerprint};
use blitzen_protocol::Outcome;
use bytes::Bytes;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

/// The name of the task every Python call runs as.
pub(crate) const NAME: &str = "python";

/// The package's `execute`, set by [`init`].
static EXECUTE: OnceLock<Py<PyAny>> = OnceLock::new();

/// The task as drivers submit it, set by [`init`].
static TASK: OnceLock<NamedTask> = OnceLock::new();

/// The `python` task, once the package has called [`init`].
pub(crate) fn named() -> PyResult<NamedTask> {
    TASK.get().copied().ok_or_else(|| {
        PyRuntimeError::new_err("blitzen._native.init() was not called (import blitzen first)")
    })
}

/// Registers the `python` task with `signature` (the versions it depends on) and the function
/// that runs a call. The package calls it once, on import, before any dispatcher or agent.
#[pyfunction]
pub(crate) fn init(signature: String, execute: Py<PyAny>) -> PyResult<()> {
    if let Some(task) = TASK.get() {
        return if task.signature == signature {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("blitzen._native.init() called twice, differently"))
        };
    }
    // Made once per process and kept for its lifetime, as the registry's entries are.
    let signature: &'static str = Box::leak(signature.into_boxed_str());
    let entry: &'static TaskEntry = Box::leak(Box::new(TaskEntry {
        name: NAME,
        module: "blitzen",
        signature,
        fingerprint: fingerprint(signature),
        invoke,
    }));
    registry::add(entry, Some(group)).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let _ = EXECUTE.set(execute);
    let _ = TASK.set(NamedTask { name: NAME, signature, fingerprint: entry.fingerprint });
    Ok(())
}

/// Runs Blitzen's worker loop if this interpreter was started as a worker by a pool: it then
/// never returns. Otherwise raises `RuntimeError`.
#[pyfunction]
pub(crate) fn worker_main(py: Python<'_>) -> PyResult<()> {
    if !blitzen_common::worker::is_unentered_worker() {
        return Err(PyRuntimeError::new_err(
            "this interpreter was not started as a Blitzen worker (BLITZEN_WORKER is unset)",
        ));
    }
    named()?;
    // The loop waits for work without the interpreter lock; each call takes it (`invoke`).
    py.detach(blitzen_common::worker_main);
    Err(PyRuntimeError::new_err("the worker loop returned"))
}

/// The bytes before the pickle: the call's group, which tells the pool's run-time estimates one
/// function from another (they all are the one `python` task).
const HEADER: usize = 8;

/// The registry entry's grouper: the group the driver wrote before the pickle.
fn group(args: &[u8]) -> u64 {
    args.first_chunk::<HEADER>().map_or(0, |b| u64::from_le_bytes(*b))
}

/// The byte after the header of a call that takes other tasks' results (a pickle starts with
/// its `PROTO` opcode, `0x80`, instead).
const WITH_INPUTS: u8 = 0;

/// The parts of a call that takes other tasks' results: its header and [`WITH_INPUTS`], then the
/// call's pickle and each input's (a result's pickle, put in when it comes), each with its
/// length before it.
pub(crate) fn with_inputs(payload: Bytes, inputs: impl Iterator<Item = Part>) -> Parts {
    let split = payload.len().min(HEADER);
    let mut head = payload.slice(..split).to_vec();
    head.push(WITH_INPUTS);
    let parts = std::iter::once(Part::Value(payload.slice(split..))).chain(inputs).collect();
    Parts { framing: Framing::Prefixed(Bytes::from(head)), parts }
}

/// The pickles of a call made by [`with_inputs`]: the call's, then each input's.
fn segments(mut rest: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        out.push(tail.get(..len)?);
        rest = tail.get(len..)?;
    }
    Some(out)
}

/// The registry entry's `invoke`: runs one pickled call on this worker's interpreter.
fn invoke(args: &[u8]) -> Outcome {
    let Some(pickle) = args.get(HEADER..) else {
        return Outcome::BadArguments { message: "a python call without its header".into() };
    };
    let (call, inputs) = match pickle.split_first() {
        Some((&WITH_INPUTS, rest)) => match segments(rest).as_deref() {
            Some([call, inputs @ ..]) => (*call, Some(inputs.to_vec())),
            _ => {
                let message = "a python call with inputs, cut short".into();
                return Outcome::BadArguments { message };
            }
        },
        _ => (pickle, None),
    };
    Python::attach(|py| {
        let Some(execute) = EXECUTE.get() else {
            return Outcome::BadArguments { message: "the blitzen package is not set up".into() };
        };
        let inputs = inputs.map(|i| i.into_iter().map(|b| PyBytes::new(py, b)).collect::<Vec<_>>());
        // The devices the call holds, for `os.environ` (the process environment has them).
        let devices = blitzen_common::worker::current_devices();
        let environ = (!devices.is_empty()).then_some(devices);
        let answer = execute
            .call1(py, (PyBytes::new(py, call), inputs, environ))
            .and_then(|answer| answer.extract::<(u8, Option<PyBackedBytes>, Option<String>)>(py));
        // The pickle's memory is handed on as it is: no copy.
        let shared = |b: PyBackedBytes| Bytes::from_owner(b);
        match answer {
            Ok((0, Some(value), _)) => Outcome::Value(shared(value)),
            Ok((code @ (1 | 4), exception, traceback)) => {
                if code == 4 {
                    blitzen_common::worker::note_out_of_memory();
                }
                Outcome::Returned {
                    message: traceback.unwrap_or_else(|| "the task raised".into()),
                    detail: exception.map(shared),
                }
            }
            Ok((2, _, why)) => Outcome::BadArguments { message: why.unwrap_or_default() },
            Ok((3, _, why)) => Outcome::BadOutput { message: why.unwrap_or_default() },
            Ok((code, ..)) => Outcome::BadOutput {
                message: format!("blitzen._worker.execute answered with code {code}"),
            },
            Err(e) => {
                Outcome::BadOutput { message: format!("blitzen._worker.execute failed: {e}") }
            }
        }
    })
}
