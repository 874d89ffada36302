//! Results as the Python package takes them: one tuple per task ([`Row`]), the value still
//! pickled (or, for one large `bytes` value, taken out of its pickle).

use blitzen::TaskResult;
use blitzen_protocol::Outcome;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// One result for Python: `(kind, value, message, task, host, pid, stdout, stderr, detail,
/// unstreamed, name)`, `unstreamed` the lines of a streamed task not shown as they came, `name`
/// what people see the call as (its function's `module.qualname`).
///
/// `kind` is `ok` (`value` is the pickled value), `bytes` (the value is one large `bytes`
/// object, taken out of its pickle here: `value` is that object), `raised` (`message` is the traceback,
/// `detail` the pickled exception if it pickled), `timeout`, `crashed`, `cancelled`, `lost`
/// (also: refused by the server, or no agent could run it), or `error` (anything else: the call
/// did not unpickle, the value did not pickle, no worker has the task…), with `message` the
/// full error text.
pub(crate) type Row<'py> = (
    &'static str,
    Option<Bound<'py, PyBytes>>,
    String,
    u64,
    Option<String>,
    Option<u32>,
    String,
    String,
    Option<Bound<'py, PyBytes>>,
    u64,
    String,
);

/// The row of one result.
pub(crate) fn row<'py>(py: Python<'py>, r: &TaskResult) -> Row<'py> {
    let kind = match &r.run.outcome {
        Outcome::Value(pickle) if large_bytes(pickle).is_some() => "bytes",
        Outcome::Value(_) => "ok",
        Outcome::Returned { .. } => "raised",
        Outcome::TimedOut { .. } => "timeout",
        Outcome::WorkerCrashed { .. } => "crashed",
        Outcome::MemoryExceeded { .. } => "memory",
        Outcome::Cancelled { .. } => "cancelled",
        Outcome::Lost { .. } | Outcome::Refused { .. } | Outcome::Unrunnable { .. } => "lost",
        Outcome::DependencyFailed { .. } => "dependency",
        _ => "error",
    };
    let (value, message, detail) = match &r.run.outcome {
        Outcome::Value(pickle) => match large_bytes(pickle) {
            Some(data) => (Some(PyBytes::new(py, data)), String::new(), None),
            None => (Some(PyBytes::new(py, pickle)), String::new(), None),
        },
        Outcome::Returned { message, detail } => {
            (None, message.clone(), detail.as_ref().map(|d| PyBytes::new(py, d)))
        }
        _ => (None, r.outcome().err().map(|e| e.to_string()).unwrap_or_default(), None),
    };
    let (host, pid) = match &r.worker {
        Some(w) => (w.host.clone(), Some(w.pid)),
        None => (None, None),
    };
    let unstreamed = r.run.stdout.unstreamed + r.run.stderr.unstreamed;
    let (stdout, stderr) = (r.run.stdout.to_text(), r.run.stderr.to_text());
    (kind, value, message, r.id, host, pid, stdout, stderr, detail, unstreamed, r.task.to_string())
}

/// The data of a pickle (protocol 5) of one `bytes` object of 64 KiB or more, as Python
/// writes it: `PROTO 5, BINBYTES <len:u32> <data>, MEMOIZE, STOP`. Taking it out here saves
/// unpickling a copy of what may be megabytes.
fn large_bytes(pickle: &[u8]) -> Option<&[u8]> {
    let rest = pickle.strip_prefix(b"\x80\x05B")?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let data = rest.strip_suffix(b"\x94.")?;
    (data.len() >= 64 * 1024 && data.len() == u32::from_le_bytes(*len) as usize).then_some(data)
}
