//! How a worker tells its pool which task it is running, at no cost per task: a counter of the
//! tasks it has started, in eight bytes of memory the two processes share.
//!
//! The pool creates a small memory file (`memfd`) for each worker and hands it over through
//! the worker's socket (`SCM_RIGHTS`, with one byte, before any frame). The worker maps it and
//! stores the number of tasks it has started before it runs each one: a plain store into memory,
//! no system call. When the worker dies, the pool reads the counter from its own descriptor of
//! the file. Knowing how many of the tasks it sent were answered, it knows which one ran when the
//! worker died — the ones before it had finished (their results were still in the worker's
//! batch), the ones after had not started.
//!
//! The same message carries the descriptors the worker streams output through (see
//! `worker::stream`), so that everything a worker is given at start arrives at once.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::MemfdFlags;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The size of the shared file: one counter.
const LEN: usize = std::mem::size_of::<u64>();

/// The most descriptors handed over with the file.
pub(crate) const MAX_EXTRA: usize = 4;

/// The pool's side: the file, read once the worker is gone.
#[derive(Debug)]
pub(crate) struct StartMarks {
    file: OwnedFd,
}

impl StartMarks {
    /// A new file holding a zero count.
    pub(crate) fn new() -> io::Result<Self> {
        let file = rustix::fs::memfd_create("blitzen-worker-starts", MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&file, LEN as u64)?;
        Ok(Self { file })
    }

    /// Sends the file, and `extra` descriptors (at most [`MAX_EXTRA`]), to the worker on the
    /// far end of `socket`, ahead of anything else.
    pub(crate) fn hand_over(
        &self,
        socket: &UnixStream,
        extra: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1 + MAX_EXTRA))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds: Vec<BorrowedFd<'_>> =
            std::iter::once(self.file.as_fd()).chain(extra.iter().copied()).collect();
        if extra.len() > MAX_EXTRA || !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor in the message"));
        }
        let sent =
            rustix::net::sendmsg(socket, &[IoSlice::new(&[1])], &mut control, SendFlags::empty())?;
        if sent != 1 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    /// Tasks the worker had started when it was last seen.
    pub(crate) fn started(&self) -> io::Result<u64> {
        let mut bytes = [0u8; LEN];
        let n = rustix::io::pread(&self.file, &mut bytes, 0)?;
        if n != LEN {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(u64::from_ne_bytes(bytes))
    }
}

/// The worker's side: the counter, in the shared file mapped into its memory.
#[derive(Debug)]
pub(crate) struct StartCounter {
    cell: &'static AtomicU64,
    count: u64,
}

impl StartCounter {
    /// Takes the file the pool sent first thing on `socket` and maps it; returns it with the
    /// other descriptors that came along, in order.
    pub(crate) fn receive(socket: &UnixStream) -> io::Result<(Self, Vec<OwnedFd>)> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1 + MAX_EXTRA))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8];
        let got = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let mut fds = fds.into_iter();
        let file: OwnedFd = match (got.bytes, fds.next()) {
            (1, Some(file)) => file,
            _ => return Err(io::Error::other("the pool did not send the start counter first")),
        };
        let extra: Vec<OwnedFd> = fds.collect();
        if rustix::fs::fstat(&file)?.st_size < LEN as i64 {
            return Err(io::Error::other("the start counter's file is too small"));
        }
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new shared mapping of the file's first page, at an address the kernel picks,
        // so it overlaps nothing of ours. It is never unmapped (the mapping outlives the
        // descriptor, closed below), so the reference is valid for the rest of the process. The
        // file is at least 8 bytes long (checked above) and the mapping page-aligned, so the
        // `AtomicU64` is in bounds and aligned; only this process writes it, the pool reads it
        // with `pread` once this process is gone.
        #[allow(unsafe_code)]
        let cell = unsafe {
            let at = rustix::mm::mmap(
                std::ptr::null_mut(),
                LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )?;
            &*(at as *const AtomicU64)
        };
        Ok((Self { cell, count: cell.load(Ordering::Relaxed) }, extra))
    }

    /// Counts one more task started: call it just before running the task.
    pub(crate) fn start(&mut self) {
        self.count += 1;
        self.cell.store(self.count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_reads_what_the_worker_counts() {
        let (pool, worker) = UnixStream::pair().expect("socket pair");
        let marks = StartMarks::new().expect("memfd");
        assert_eq!(marks.started().expect("reads"), 0);
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        marks.hand_over(&pool, &[read.as_fd(), write.as_fd()]).expect("sends");
        // Frames after the hand-over are left for the worker's frame reader.
        use std::io::{Read, Write};
        (&pool).write_all(b"frames").expect("writes");
        let (mut counter, extra) = StartCounter::receive(&worker).expect("receives");
        assert_eq!(extra.len(), 2, "the other descriptors came along");
        rustix::io::write(&extra[1], b"x").expect("writes into the pipe it was given");
        let mut got = [0u8];
        assert_eq!(rustix::io::read(&read, &mut got).expect("reads"), 1);
        for _ in 0..3 {
            counter.start();
        }
        assert_eq!(marks.started().expect("reads"), 3);
        let mut rest = [0u8; 6];
        (&worker).read_exact(&mut rest).expect("reads the frames");
        assert_eq!(&rest, b"frames");
    }

    #[test]
    fn a_socket_without_the_counter_is_an_error() {
        let (pool, worker) = UnixStream::pair().expect("socket pair");
        use std::io::Write;
        (&pool).write_all(&[1]).expect("writes");
        let error = StartCounter::receive(&worker).expect_err("no descriptor came");
        assert!(error.to_string().contains("start counter"), "{error}");
    }
}
