//! [`RuntimeThread`]: the background thread of a dispatcher or a `LocalCluster`, which drives a
//! tokio runtime of its own until it is stopped.
//!
//! The runtime is built on the caller's thread, so that a failure to build it is an error of
//! the constructor at once; the thread then runs one future, given a token that asks it to end.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::error::DispatchError;

/// A runtime with one thread: the one of a [`RuntimeThread`].
pub(crate) fn current_thread() -> Result<Runtime, DispatchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DispatchError::Runtime)
}

/// A runtime with `workers` threads of its own.
pub(crate) fn multi_thread(workers: usize) -> Result<Runtime, DispatchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(DispatchError::Runtime)
}

/// A named thread driving a runtime until its future ends. [`RuntimeThread::stop`] (also run
/// on drop) cancels the future's token and waits for the thread.
#[derive(Debug)]
pub(crate) struct RuntimeThread {
    /// Handed to the future: cancelled to ask it to end.
    stop: CancellationToken,
    /// Taken by the first `stop`, which joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RuntimeThread {
    /// Starts a thread named `name` that runs `main(stop)` on `runtime` to its end.
    pub(crate) fn spawn<F>(
        name: &str,
        runtime: Runtime,
        main: impl FnOnce(CancellationToken) -> F + Send + 'static,
    ) -> Result<Self, DispatchError>
    where
        F: Future<Output = ()>,
    {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || runtime.block_on(main(token)))
            .map_err(DispatchError::Runtime)?;
        Ok(Self { stop, thread: Mutex::new(Some(thread)) })
    }

    /// Asks the future to end and waits until the thread has; idempotent.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_the_future_and_joins_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread =
            RuntimeThread::spawn("test", current_thread().expect("runtime"), |stop| async move {
                stop.cancelled().await;
                let _ = tx.send("ended");
            })
            .expect("spawned");
        thread.stop();
        assert_eq!(rx.try_recv(), Ok("ended"), "the future ran to its end before stop returned");
        thread.stop();
    }
}
