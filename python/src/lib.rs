//! `blitzen._native`: the Rust half of the Python package.
//!
//! The Python package (`python/blitzen/`) holds the API its users see; this module gives it the
//! Rust core:
//! - `task`: the one task every Python call runs as, `python`, whose arguments are a pickle of
//!   `(function, args, kwargs)` and whose value is a pickle; its entry is added to the task
//!   registry at run time, with the interpreter and pickle versions in its signature. In a worker
//!   process, `worker_main` runs Blitzen's worker loop, which calls the package's `execute`.
//! - `dispatch`: `Dispatcher`, one class over Blitzen's multicore and distributed dispatchers,
//!   which submits pickles, waits (without the interpreter lock, and waking for Ctrl-C) and hands
//!   each result back as a plain tuple (`rows`) for the package to turn into a value or an
//!   exception.
//! - `handles`: what a `Dispatcher` hands out besides results: the `OutputReader` the package's
//!   printer thread takes streamed lines from, `Completions` (`imap_unordered`), the `Watch`
//!   an `Executor` waits on, and the `SharedValue` behind `blitzen.Shared`.
//! - `log`: Blitzen's `tracing` events, forwarded to Python's `logging` (the `blitzen` logger).

use pyo3::prelude::*;

mod dispatch;
mod handles;
mod log;
mod rows;
mod task;

/// The module Python imports as `blitzen._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(task::init, m)?)?;
    m.add_function(wrap_pyfunction!(task::worker_main, m)?)?;
    m.add_function(wrap_pyfunction!(log::forward_logs, m)?)?;
    m.add_function(wrap_pyfunction!(log::set_log_threshold, m)?)?;
    m.add_function(wrap_pyfunction!(log::stop_forwarding, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch::local_ip, m)?)?;
    m.add_class::<dispatch::Dispatcher>()?;
    m.add_class::<handles::Completions>()?;
    m.add_class::<handles::Watch>()?;
    m.add_class::<handles::SharedValue>()?;
    m.add_class::<handles::OutputReader>()?;
    m.add("TASK_NAME", task::NAME)?;
    Ok(())
}
