//! Results leaving a worker: batched when tasks stream, sent at once when the worker goes idle,
//! and never held back by a long task.
//!
//! The main thread appends each result with [`Outbox::push`] and calls [`Outbox::flush`] before
//! it blocks waiting for work, so a lone task's result leaves immediately. While more tasks are
//! already queued it keeps going instead; a flusher thread then sends what has accumulated once
//! the oldest result has waited [`FLUSH_DELAY`]. That bounds the delay even when the next task
//! runs for an hour — without it, the pool would believe the finished task still runs.
//!
//! A large value (at least [`SPLICE_BYTES`]) is not copied into the batch: the batch keeps a
//! gap where it goes, and the write sends it from the value's own memory with the rest
//! (a vectored write).

use std::io::{self, IoSlice, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blitzen_protocol::frame::{HEADER_LEN, MAX_FRAME_LEN, encode};
use blitzen_protocol::{EncodeError, FromWorker, Outcome};
use bytes::{BufMut, Bytes, BytesMut};

/// How long a finished result may wait for company before the flusher sends it.
pub const FLUSH_DELAY: Duration = Duration::from_micros(200);

/// Pending bytes past which the main thread sends at once rather than keep accumulating.
const FLUSH_BYTES: usize = 256 * 1024;

/// Values at least this large are sent from their own memory rather than copied.
pub(super) const SPLICE_BYTES: usize = 64 * 1024;

/// Encoded messages, and the large values that go into them, in order.
#[derive(Debug, Default)]
struct Batch {
    buf: BytesMut,
    /// Each large value and where in `buf` it goes.
    splices: Vec<(usize, Bytes)>,
    /// Their total length.
    spliced: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.buf.len() + self.spliced
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.splices.is_empty()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.splices.clear();
        self.spliced = 0;
    }

    /// Appends one frame; a large value is spliced in rather than copied.
    fn push(&mut self, msg: &FromWorker) -> Result<(), EncodeError> {
        let large = match msg {
            FromWorker::Done(done) => match &done.run.outcome {
                Outcome::Value(value) if value.len() >= SPLICE_BYTES => Some(value.clone()),
                _ => None,
            },
            FromWorker::Ready(_) | FromWorker::Output { .. } => None,
        };
        let Some(large) = large else { return encode(msg, &mut self.buf) };
        let start = self.buf.len();
        let splices = self.splices.len();
        self.buf.put_u32(0);
        let mut writer = Splicer { batch: self, large: &large, spliced: 0 };
        let result = rmp_serde::encode::write_named(&mut writer, msg);
        let spliced = writer.spliced;
        let len = self.buf.len() - start - HEADER_LEN + spliced;
        if let Err(e) = result {
            self.unwind(start, splices);
            return Err(e.into());
        }
        if len > MAX_FRAME_LEN {
            self.unwind(start, splices);
            return Err(EncodeError::TooLarge { len, max: MAX_FRAME_LEN });
        }
        self.spliced += spliced;
        // `len <= MAX_FRAME_LEN < u32::MAX`, checked just above.
        self.buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    fn unwind(&mut self, start: usize, splices: usize) {
        self.buf.truncate(start);
        self.splices.truncate(splices);
    }

    /// Sends everything: one write, or a vectored one around the large values.
    fn write_to(&self, socket: &mut UnixStream) -> io::Result<()> {
        if self.splices.is_empty() {
            return socket.write_all(&self.buf);
        }
        let mut slices = Vec::with_capacity(2 * self.splices.len() + 1);
        let mut at = 0;
        for (offset, value) in &self.splices {
            slices.push(IoSlice::new(&self.buf[at..*offset]));
            slices.push(IoSlice::new(value));
            at = *offset;
        }
        slices.push(IoSlice::new(&self.buf[at..]));
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            match socket.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The encoder's output: everything is copied into the batch but the large value, whose place
/// is recorded instead (MessagePack writes a binary's bytes in one call, after its length).
struct Splicer<'a> {
    batch: &'a mut Batch,
    large: &'a Bytes,
    spliced: usize,
}

impl Write for Splicer<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.spliced == 0
            && data.as_ptr() == self.large.as_ptr()
            && data.len() == self.large.len()
        {
            self.batch.splices.push((self.batch.buf.len(), self.large.clone()));
            self.spliced = data.len();
        } else {
            self.batch.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

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
    batch: Batch,
}

#[derive(Debug)]
struct Pending {
    batch: Batch,
    since: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    pub(super) fn new(socket: UnixStream) -> Self {
        Self {
            pending: Mutex::new(Pending {
                batch: Batch { buf: BytesMut::with_capacity(64 * 1024), ..Batch::default() },
                since: None,
            }),
            filled: Condvar::new(),
            writer: Mutex::new(Writer { socket, batch: Batch::default() }),
        }
    }

    /// Queues one message; sends at once if a lot is pending.
    pub(super) fn push(&self, msg: &FromWorker) -> Result<(), blitzen_protocol::EncodeError> {
        let mut pending = lock(&self.pending);
        pending.batch.push(msg)?;
        if pending.since.is_none() {
            pending.since = Some(Instant::now());
            self.filled.notify_one();
        }
        let large = pending.batch.len() >= FLUSH_BYTES;
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
            std::mem::swap(&mut pending.batch, &mut writer.batch);
        }
        if writer.batch.is_empty() {
            return Ok(());
        }
        let written = writer.batch.write_to(&mut writer.socket);
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

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::frame::decode_frame;
    use blitzen_protocol::{Captured, Finished, JobId, Report, WorkerReady};
    use std::io::Read;

    fn done(id: u64, value: Bytes) -> FromWorker {
        let stderr = Captured { head: Bytes::from_static(b"a warning\n"), ..Captured::default() };
        let run = Finished {
            outcome: Outcome::Value(value),
            stdout: Captured::default(),
            stderr,
            elapsed_us: 7,
        };
        FromWorker::Done(Report { id: JobId::new(id), worker: None, run })
    }

    /// Large values are spliced in, small ones copied: on the wire both are exactly what
    /// plain `encode` writes.
    #[test]
    fn spliced_frames_are_the_frames_encode_writes() {
        let large: Bytes = (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let messages = [
            FromWorker::Ready(WorkerReady { pid: 1, version: 1 }),
            done(1, large.clone()),
            done(2, Bytes::from_static(b"\x2a")),
            done(3, large.slice(..SPLICE_BYTES)),
        ];
        let mut batch = Batch::default();
        let mut expected = BytesMut::new();
        for msg in &messages {
            batch.push(msg).expect("encodes");
            encode(msg, &mut expected).expect("encodes");
        }
        assert_eq!(batch.splices.len(), 2, "both large values are spliced");
        assert_eq!(batch.len(), expected.len());
        let (mut ours, mut theirs) = UnixStream::pair().expect("socket pair");
        let reader = std::thread::spawn(move || {
            let mut wire = Vec::new();
            theirs.read_to_end(&mut wire).map(|_| wire)
        });
        batch.write_to(&mut ours).expect("written");
        drop(ours);
        let wire = reader.join().expect("reader").expect("read");
        assert_eq!(wire, &expected[..]);
        let mut wire = BytesMut::from(&wire[..]);
        let mut frames = 0;
        while let Some(_frame) = decode_frame(&mut wire, MAX_FRAME_LEN).expect("a frame") {
            frames += 1;
        }
        assert_eq!(frames, messages.len());
    }

    #[test]
    fn a_value_too_large_for_a_frame_leaves_the_batch_as_it_was() {
        let mut batch = Batch::default();
        batch.push(&done(1, Bytes::from_static(b"small"))).expect("encodes");
        let before = batch.buf.clone();
        let huge = Bytes::from(vec![0u8; MAX_FRAME_LEN + 1]);
        let err = batch.push(&done(2, huge)).expect_err("too large");
        assert!(matches!(err, EncodeError::TooLarge { .. }), "{err}");
        assert_eq!(batch.buf, before);
        assert!(batch.splices.is_empty() && batch.spliced == 0);
    }
}
