//! Live output of streamed tasks ([`RunTask::stream`](blitzen_protocol::RunTask::stream)).
//!
//! A task that is not streamed writes straight into its capture files (see [`crate::capture`]).
//! While a streamed one runs, fd 1 and fd 2 are instead the write ends of two pipes, and a
//! reader thread of the worker takes what arrives: it moves it into the capture files with
//! `splice` — in the kernel, so that at any moment each byte is in the pipe or in the file,
//! and a worker dying mid-way loses nothing: the pool holds both, and salvages the pipe —, reads
//! it back from there, and sends whole lines to the pool
//! ([`FromWorker::Output`]) as they come, within a budget per task ([`STREAM_BURST`] at once,
//! then [`STREAM_RATE`]); lines beyond it are counted, not sent
//! ([`Captured::unstreamed`](blitzen_protocol::Captured::unstreamed)). When the task ends the
//! main thread, holding the same lock as the reader, drains the pipes: everything the task
//! wrote is sent before its result, and nothing written after it is counted as its own. The
//! pipes stay on fd 1 and fd 2 for the next streamed task; a task that is not streamed gets
//! the capture files back first. A streamed task thus costs one `poll` more than another when
//! it prints nothing.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use blitzen_protocol::output::MAX_LINE;
use blitzen_protocol::{FromWorker, JobId, Lines, StdStream};
use bytes::{BufMut, BytesMut};
use rustix::fs::SeekFrom;

use super::outbox::Outbox;

/// Bytes of lines a task may stream at once (each line also costs 32 bytes more, so empty lines
/// are bounded too).
pub const STREAM_BURST: u64 = 256 * 1024;

/// Bytes of lines per second a task streams past its burst.
pub const STREAM_RATE: u64 = 64 * 1024;

/// What each line costs of the budget beyond its bytes: a task printing empty lines is bounded
/// too.
const LINE_COST: u64 = 32;

/// The two pipes, the reader thread's state, and the capture files to put back.
pub(super) struct Streamer {
    shared: Arc<Shared>,
    /// The pipes' write ends, put on fd 1 and fd 2 for streamed tasks.
    writers: [OwnedFd; 2],
    /// Duplicates of the capture files (sharing their offsets), put back on fd 1 and fd 2 for
    /// a task that is not streamed; its output is taken from them.
    captures: [OwnedFd; 2],
    /// Whether fd 1 and fd 2 are the pipes now.
    on_pipes: Cell<bool>,
}

struct Shared {
    state: Mutex<State>,
    /// The pipes' read ends, non-blocking.
    readers: [OwnedFd; 2],
    outbox: Arc<Outbox>,
}

struct State {
    /// The streamed task running, if one is.
    task: Option<JobId>,
    /// Each stream's capture file (what fd 1 and fd 2 are between streamed tasks).
    files: [File; 2],
    /// Each stream's unfinished last line.
    partial: [BytesMut; 2],
    /// Lines of each stream not sent.
    unstreamed: [u64; 2],
    /// What the task may still send, in bytes, as of `refilled`.
    budget: u64,
    refilled: Instant,
}

const STREAMS: [StdStream; 2] = [StdStream::Stdout, StdStream::Stderr];

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Streamer {
    /// Takes the pipes the pool handed over (stdout's read and write ends, then stderr's; the
    /// read ends non-blocking) and starts the reader thread; fd 1 and fd 2 must be the capture
    /// files. The pool keeps its own read ends: what this worker had not read when it died, the
    /// pool takes into the capture.
    pub(super) fn start(outbox: Arc<Outbox>, pipes: Vec<OwnedFd>) -> io::Result<Self> {
        let Ok([out_r, out_w, err_r, err_w]) = <[OwnedFd; 4]>::try_from(pipes) else {
            return Err(io::Error::other("the pool did not hand over the output pipes"));
        };
        let captures = [io::stdout().as_fd().try_clone_to_owned()?, {
            io::stderr().as_fd().try_clone_to_owned()?
        }];
        let files = [File::from(captures[0].try_clone()?), File::from(captures[1].try_clone()?)];
        let state = State {
            task: None,
            files,
            partial: [BytesMut::new(), BytesMut::new()],
            unstreamed: [0; 2],
            budget: STREAM_BURST,
            refilled: Instant::now(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), readers: [out_r, err_r], outbox });
        let reader = shared.clone();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("blitzen-output".into()).spawn(move || {
            // Once through everything the reader does, before the task runs: what a new thread
            // sets up lazily (its thread-local data, above all) must not be set up while a
            // task's memory limit is in force, where it cannot be had.
            reader.drain(&mut lock(&reader.state));
            let _ = ready_tx.send(());
            reader.run_reader()
        })?;
        ready.recv().map_err(|_| io::Error::other("the output reader thread did not start"))?;
        Ok(Self { shared, writers: [out_w, err_w], captures, on_pipes: Cell::new(false) })
    }

    /// The capture files, where every task's output ends up.
    pub(super) fn captures(&self) -> [BorrowedFd<'_>; 2] {
        [self.captures[0].as_fd(), self.captures[1].as_fd()]
    }

    /// The streamed task `id` starts: what it writes goes through the pipes.
    pub(super) fn begin(&self, id: JobId) -> io::Result<()> {
        {
            let mut st = lock(&self.shared.state);
            st.task = Some(id);
            st.unstreamed = [0; 2];
            st.budget = STREAM_BURST;
            st.refilled = Instant::now();
        }
        if !self.on_pipes.get() {
            rustix::stdio::dup2_stdout(&self.writers[0])?;
            rustix::stdio::dup2_stderr(&self.writers[1])?;
            self.on_pipes.set(true);
        }
        Ok(())
    }

    /// A task that is not streamed starts: it writes into the capture files again. What a
    /// process left behind wrote into the pipes meanwhile is captured first.
    pub(super) fn pause(&self) -> io::Result<()> {
        if self.on_pipes.get() {
            rustix::stdio::dup2_stdout(&self.captures[0])?;
            rustix::stdio::dup2_stderr(&self.captures[1])?;
            self.on_pipes.set(false);
            self.shared.drain(&mut lock(&self.shared.state));
        }
        Ok(())
    }

    /// The task ended (its buffered output flushed): what is left in the pipes is taken, and
    /// its last lines sent. Returns the lines of each stream not sent.
    pub(super) fn end(&self) -> [u64; 2] {
        let mut st = lock(&self.shared.state);
        if self.shared.readable() {
            self.shared.drain(&mut st);
        }
        for i in 0..2 {
            let last = st.partial[i].split().freeze();
            if !last.is_empty() {
                self.shared.send_lines(&mut st, i, last);
            }
        }
        st.task = None;
        std::mem::take(&mut st.unstreamed)
    }
}

impl Shared {
    /// The reader thread: waits for either pipe, and takes what arrived. Never returns.
    fn run_reader(&self) {
        use rustix::event::{PollFd, PollFlags, poll};
        loop {
            let mut fds = [
                PollFd::new(&self.readers[0], PollFlags::IN),
                PollFd::new(&self.readers[1], PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
            let mut st = lock(&self.state);
            self.drain(&mut st);
        }
    }

    /// Whether either pipe holds something, asked of both in one `poll`.
    fn readable(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [
            PollFd::new(&self.readers[0], PollFlags::IN),
            PollFd::new(&self.readers[1], PollFlags::IN),
        ];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        // On an error, read them: that only costs a `read` each.
        !matches!(poll(&mut fds, Some(&now)), Ok(0))
    }

    /// Moves both pipes into the capture files until the pipes are empty, and takes the lines
    /// from what was moved.
    fn drain(&self, st: &mut State) {
        use rustix::pipe::{SpliceFlags, splice};
        // On the stack: nothing is allocated here while a task's memory limit is in force.
        let mut buf = [0u8; 64 * 1024];
        for i in 0..2 {
            while let Ok(at) = rustix::fs::seek(&st.files[i], SeekFrom::Current(0)) {
                // At an explicit offset, then the file's position moved past what came: a
                // `splice` at the file's own position writes that position back even when it
                // moves nothing, which would undo the main thread rewinding the file after a
                // task (it does so without this lock).
                let mut end = at;
                let moved = splice(
                    &self.readers[i],
                    None,
                    &st.files[i],
                    Some(&mut end),
                    buf.len(),
                    SpliceFlags::NONBLOCK,
                );
                match moved {
                    Ok(0) | Err(rustix::io::Errno::AGAIN) => break,
                    Ok(n) => {
                        if rustix::fs::seek(&st.files[i], SeekFrom::Start(end)).is_err() {
                            break;
                        }
                        match rustix::io::pread(&st.files[i], &mut buf[..n], at) {
                            Ok(got) => self.take(st, i, &buf[..got]),
                            Err(_) => break,
                        }
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    // The capture file takes no more (memory is short): the lines are still
                    // read, so the task is never stuck on a full pipe; they are not captured.
                    Err(_) => match rustix::io::read(&self.readers[i], &mut buf) {
                        Ok(n) if n > 0 => self.take(st, i, &buf[..n]),
                        _ => break,
                    },
                }
            }
        }
    }

    /// Bytes the task wrote to stream `i`, now in its capture: its whole lines go out.
    fn take(&self, st: &mut State, i: usize, data: &[u8]) {
        if st.task.is_none() {
            // From a process a task left behind: captured, counted for nobody.
            return;
        }
        st.partial[i].extend_from_slice(data);
        let whole = match st.partial[i].iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if st.partial[i].len() >= MAX_LINE => st.partial[i].len(),
            None => return,
        };
        let mut lines = st.partial[i].split_to(whole);
        if lines.len() > MAX_LINE || lines.last() != Some(&b'\n') {
            lines = cut_long_lines(lines);
        }
        self.send_lines(st, i, lines.freeze());
    }

    /// Sends what of `text` (whole lines) the task's budget allows; counts the rest.
    fn send_lines(&self, st: &mut State, i: usize, text: bytes::Bytes) {
        let Some(id) = st.task else { return };
        let now = Instant::now();
        let refill = now.saturating_duration_since(st.refilled).as_secs_f64() * STREAM_RATE as f64;
        if refill >= 1.0 {
            st.budget = (st.budget + refill as u64).min(STREAM_BURST);
            st.refilled = now;
        }
        let mut sent = 0;
        let mut start = 0;
        while start < text.len() {
            let end = text[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |p| start + p + 1);
            let cost = (end - start) as u64 + LINE_COST;
            if cost <= st.budget {
                st.budget -= cost;
                sent = end;
            } else {
                // Past the budget, every later line of this batch is counted too: lines are
                // sent in order or not at all.
                st.unstreamed[i] += Lines { stream: STREAMS[i], text: text.slice(start..) }.count();
                break;
            }
            start = end;
        }
        if sent > 0 {
            let lines = Lines { stream: STREAMS[i], text: text.slice(..sent) };
            let count = lines.count();
            if self.outbox.push(&FromWorker::Output { id, lines }).is_err() {
                st.unstreamed[i] += count;
            }
        }
    }
}

/// Lines longer than [`MAX_LINE`] cut into pieces that each end with `\n`.
fn cut_long_lines(lines: BytesMut) -> BytesMut {
    let mut out = BytesMut::with_capacity(lines.len() + lines.len() / MAX_LINE + 1);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        for piece in line.chunks(MAX_LINE) {
            out.put_slice(piece);
            if piece.last() != Some(&b'\n') {
                out.put_u8(b'\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_into_pieces_that_end_with_a_newline() {
        let mut text = vec![b'x'; MAX_LINE * 2 + 5];
        text.push(b'\n');
        text.extend_from_slice(b"short\n");
        let cut = cut_long_lines(BytesMut::from(&text[..]));
        let pieces: Vec<&[u8]> = cut.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(pieces.len(), 4);
        assert!(pieces.iter().all(|p| p.len() <= MAX_LINE + 1 && p.ends_with(b"\n")));
        assert_eq!(pieces[3], b"short\n");
        let kept: usize = pieces.iter().map(|p| p.iter().filter(|&&b| b == b'x').count()).sum();
        assert_eq!(kept, MAX_LINE * 2 + 5);
    }
}
