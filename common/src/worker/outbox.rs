//! Results leaving a worker: batched when tasks stream, sent at once when the worker goes idle,
//! and never held back by a long task.
//!
//! The main thread appends each result with [`Outbox::push`] and calls [`Outbox::flush`] before
//! it blocks waiting for work, so a lone task's result leaves immediately. While more tasks are
//! already queued it keeps going instead; a flusher thread then sends what has accumulated once
//! the oldest result has waited [`FLUSH_DELAY`]. That bounds the delay even when the next task
//! runs for an hour — without it, the pool would believe the finished task still runs.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blitzen_protocol::FromWorker;
use blitzen_protocol::frame::encode;
use bytes::BytesMut;

/// How long a finished result may wait for company before the flusher sends it.
pub const FLUSH_DELAY: Duration = Duration::from_micros(200);

/// Pending bytes past which the main thread sends at once rather than keep accumulating.
const FLUSH_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub(super) struct Outbox {
    /// Encoded results not yet sent, and when the oldest of them was added.
    pending: Mutex<Pending>,
    /// Signalled when `pending` goes from empty to non-empty.
    filled: Condvar,
    /// The socket and the batch being written, locked for the whole of a write so that
    /// batches leave in order. The two buffers are swapped, never reallocated, so a worker
    /// returning large values does not fault in fresh memory for each.
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    socket: UnixStream,
    batch: BytesMut,
}

#[derive(Debug)]
struct Pending {
    buf: BytesMut,
    since: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    pub(super) fn new(socket: UnixStream) -> Self {
        Self {
            pending: Mutex::new(Pending { buf: BytesMut::with_capacity(64 * 1024), since: None }),
            filled: Condvar::new(),
            writer: Mutex::new(Writer { socket, batch: BytesMut::new() }),
        }
    }

    /// Queues one message; sends at once if a lot is pending.
    pub(super) fn push(&self, msg: &FromWorker) -> Result<(), blitzen_protocol::EncodeError> {
        let mut pending = lock(&self.pending);
        encode(msg, &mut pending.buf)?;
        if pending.since.is_none() {
            pending.since = Some(Instant::now());
            self.filled.notify_one();
        }
        let large = pending.buf.len() >= FLUSH_BYTES;
        drop(pending);
        if large {
            // A write error means the pool is gone; the watchdog ends the worker.
            let _ = self.flush();
        }
        Ok(())
    }

    /// Sends everything pending.
    pub(super) fn flush(&self) -> io::Result<()> {
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        {
            let mut pending = lock(&self.pending);
            pending.since = None;
            std::mem::swap(&mut pending.buf, &mut writer.batch);
        }
        if writer.batch.is_empty() {
            return Ok(());
        }
        let written = writer.socket.write_all(&writer.batch);
        writer.batch.clear();
        written
    }

    /// The flusher thread's loop: send whatever has waited [`FLUSH_DELAY`]. Never returns.
    pub(super) fn run_flusher(&self) {
        let mut pending = lock(&self.pending);
        loop {
            let Some(since) = pending.since else {
                pending = self.filled.wait(pending).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let due = since + FLUSH_DELAY;
            let now = Instant::now();
            if now < due {
                pending = self
                    .filled
                    .wait_timeout(pending, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            drop(pending);
            let _ = self.flush();
            pending = lock(&self.pending);
        }
    }
}
