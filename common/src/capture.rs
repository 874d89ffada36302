//! Bounded capture of a task's stdout and stderr.
//!
//! A worker's fd 1 and fd 2 are memory-backed files (`memfd`) created by the pool, not pipes:
//! writing never blocks and needs no reader thread, a task that wrote nothing costs one `fstat`,
//! and after a crash the pool still holds the file and can read what the dead task wrote. After
//! each task the worker keeps the head and the tail of each stream (at most [`CAPTURE_LIMIT`]
//! bytes in all, the gap counted in [`Captured::omitted`]) and empties the file.
//!
//! While a task runs, its output lives in memory in full; it is trimmed when the task ends.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use blitzen_protocol::Captured;
use bytes::Bytes;
use rustix::fs::{MemfdFlags, SeekFrom};

/// Bytes of each stream kept per task: half from the start, half from the end.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// A new, empty capture file (close-on-exec; the pool hands a duplicate to the worker).
pub fn new_capture_file(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?)
}

/// What the file holds, bounded to `limit` bytes, without changing it.
pub fn snapshot(fd: BorrowedFd<'_>, limit: usize) -> io::Result<Captured> {
    let size = rustix::fs::fstat(fd)?.st_size.max(0) as u64;
    if size == 0 {
        return Ok(Captured::default());
    }
    if size <= limit as u64 {
        return Ok(Captured { head: read_at(fd, 0, size as usize)?, ..Default::default() });
    }
    let half = limit / 2;
    let head = read_at(fd, 0, half)?;
    let tail = read_at(fd, size - half as u64, half)?;
    Ok(Captured { head, tail, omitted: size - 2 * half as u64, ..Default::default() })
}

/// [`snapshot`], then empties the file and rewinds it for the next task.
///
/// Most tasks print nothing: the file's offset, which every write moves and the last take
/// rewound, tells so with one `lseek` (an `fstat` of a memory file costs several times more,
/// twice per task).
pub fn take(fd: BorrowedFd<'_>, limit: usize) -> io::Result<Captured> {
    if rustix::fs::seek(fd, SeekFrom::Current(0))? == 0 {
        return Ok(Captured::default());
    }
    let captured = snapshot(fd, limit)?;
    if !captured.is_empty() {
        rustix::fs::ftruncate(fd, 0)?;
        rustix::fs::seek(fd, SeekFrom::Start(0))?;
    }
    Ok(captured)
}

/// Moves what waits in `pipe` (a non-blocking read end a dead worker's streamed task wrote
/// to, its own reader gone with it) into the capture file `file`, after what it holds.
/// Returns how many lines that was (a last one without its newline counts): they were never
/// streamed.
pub fn salvage(pipe: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 64 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::AGAIN) => return Ok(lines + u64::from(last != b'\n')),
            Ok(n) => {
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                last = buf[n - 1];
                let end = rustix::fs::fstat(file)?.st_size.max(0) as u64;
                let mut written = 0;
                while written < n {
                    written += rustix::io::pwrite(file, &buf[written..n], end + written as u64)?;
                }
                rustix::fs::seek(file, SeekFrom::Start(end + n as u64))?;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads up to `len` bytes at `offset` (fewer if the file is shorter).
fn read_at(fd: impl AsFd, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = rustix::io::pread(fd.as_fd(), &mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    #[test]
    fn short_output_is_kept_whole_and_the_file_emptied() {
        let fd = new_capture_file("test").expect("memfd");
        let mut file = File::from(fd.try_clone().expect("dup"));
        file.write_all(b"hello\n").expect("write");
        let c = take(fd.as_fd(), 100).expect("take");
        assert_eq!(&c.head[..], b"hello\n");
        assert!(!c.is_truncated());
        file.write_all(b"again").expect("write after rewind");
        assert_eq!(&take(fd.as_fd(), 100).expect("take").head[..], b"again");
        assert!(take(fd.as_fd(), 100).expect("take").is_empty());
    }

    #[test]
    fn output_written_by_another_descriptor_of_the_file_is_taken() {
        // A task's child process shares the capture file (and its offset) through its fd 1.
        let fd = new_capture_file("test").expect("memfd");
        let mut child = File::from(rustix::io::dup(&fd).expect("dup"));
        child.write_all(b"from a child\n").expect("write");
        assert_eq!(&take(fd.as_fd(), 100).expect("take").head[..], b"from a child\n");
        assert!(take(fd.as_fd(), 100).expect("take").is_empty(), "emptied and rewound");
    }

    #[test]
    fn what_a_dead_worker_left_in_its_pipe_joins_the_capture() {
        let fd = new_capture_file("test").expect("memfd");
        File::from(fd.try_clone().expect("dup")).write_all(b"captured\n").expect("write");
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK).expect("non-blocking");
        rustix::io::write(&write, b"last words\n").expect("write");
        rustix::io::write(&write, b"and a half").expect("write");
        assert_eq!(salvage(read.as_fd(), fd.as_fd()).expect("salvage"), 2, "two lines");
        let kept = snapshot(fd.as_fd(), 100).expect("snapshot");
        assert_eq!(&kept.head[..], b"captured\nlast words\nand a half");
        assert_eq!(salvage(read.as_fd(), fd.as_fd()).expect("nothing left"), 0);
        assert_eq!(take(fd.as_fd(), 100).expect("take").head.len(), 30, "the offset follows");
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let fd = new_capture_file("test").expect("memfd");
        let mut file = File::from(fd.try_clone().expect("dup"));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).expect("write");
        let c = snapshot(fd.as_fd(), 1000).expect("snapshot");
        assert_eq!(&c.head[..], &data[..500]);
        assert_eq!(&c.tail[..], &data[9500..]);
        assert_eq!(c.omitted, 9000);
        assert_eq!(c.total_len(), 10_000);
    }
}
