//! What a `Dispatcher` hands the package besides results: the `OutputReader` its printer
//! thread takes streamed lines from, the `Completions` of `imap_unordered`, the `Watch` an
//! `Executor`'s settling thread waits on, and the `SharedValue` behind `blitzen.Shared`; and
//! how every wait is sliced ([`SLICE`]) and timed ([`seconds`]).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use blitzen::{Completion, StdStream, Untyped};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// How long a wait runs without the interpreter lock before Python checks for signals.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// A duration in seconds from Python: a `ValueError` naming `what` for a negative one.
pub(crate) fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a number of seconds ≥ 0, not {value}"))
    })
}

/// The lines streamed tasks printed, for the package's thread that prints them.
#[pyclass(module = "blitzen._native", frozen)]
pub(crate) struct OutputReader {
    pub(crate) inner: blitzen::OutputReader,
}

#[pymethods]
impl OutputReader {
    /// Waits up to `timeout` seconds (`None`: as long as it takes) for lines; says whether
    /// there are some. `False` at once once the dispatcher has shut down and all were taken.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let limit = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        Ok(py.detach(|| self.inner.wait(limit)))
    }

    /// Every line not taken yet, oldest first: `(task, host, to_stderr, text)`.
    fn take(&self) -> Vec<(u64, Option<String>, bool, String)> {
        (self.inner.take().into_iter())
            .map(|l| {
                let text = l.to_text();
                (l.task.seq(), l.host, l.stream == StdStream::Stderr, text)
            })
            .collect()
    }
}

/// Task numbers as their tasks finish.
#[pyclass(module = "blitzen._native", frozen)]
pub(crate) struct Completions {
    pub(crate) inner: Mutex<blitzen::Completions>,
}

#[pymethods]
impl Completions {
    /// The number of the next task to finish, waiting as long as it takes; `None` once all
    /// have been reported.
    fn next(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        loop {
            let next = py.detach(|| {
                self.inner.lock().unwrap_or_else(PoisonError::into_inner).next_within(SLICE)
            });
            match next {
                Completion::Finished(seq) => return Ok(Some(seq)),
                Completion::AllDone => return Ok(None),
                Completion::Waiting => py.check_signals()?,
            }
        }
    }
}

/// A pickle shared among calls (`blitzen.Shared` holds it).
#[pyclass(module = "blitzen._native", frozen)]
pub(crate) struct SharedValue {
    pub(crate) inner: blitzen::Shared<Untyped>,
}

#[pymethods]
impl SharedValue {
    /// The pickle's size, in bytes.
    fn __len__(&self) -> usize {
        self.inner.encoded_len()
    }
}

/// The tasks an `Executor` watches as they finish.
#[pyclass(module = "blitzen._native", frozen)]
pub(crate) struct Watch {
    pub(crate) inner: blitzen::Watch,
}

#[pymethods]
impl Watch {
    /// The numbers of the watched tasks that finished since the last call, waiting for one as
    /// long as it takes (its thread is the executor's own, never the main one); `None` once
    /// `interrupt` ended the wait.
    fn next_batch(&self, py: Python<'_>) -> Option<Vec<u64>> {
        py.detach(|| {
            loop {
                match self.inner.next_within(Duration::from_secs(3600)) {
                    Some(batch) if batch.is_empty() => continue,
                    other => return other,
                }
            }
        })
    }

    /// Ends the present or next `next_batch` with `None`.
    fn interrupt(&self) {
        self.inner.interrupt();
    }
}
