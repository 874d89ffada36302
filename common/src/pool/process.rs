//! Starting one worker process, and the two tasks that serve it: a supervisor that reads its
//! answers and reaps it, and a writer that sends it jobs.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use blitzen_protocol::frame::{decode_frame, decode_shared};
use blitzen_protocol::{ExitReason, FromWorker, JobId, MAX_FRAME_LEN, Report, WorkerReady};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::capture;
use crate::pool::{OutputSink, WorkerCommand};
use crate::start_mark::StartMarks;
use crate::worker::WORKER_ENV;

/// Identifies one worker process: its slot in the pool and a generation unique to the pool,
/// so that late events from a replaced worker are recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkerId {
    pub slot: usize,
    pub generation: u64,
}

/// What a supervisor reports to the scheduler.
#[derive(Debug)]
pub(super) struct WorkerEvent {
    pub worker: WorkerId,
    pub kind: EventKind,
}

#[derive(Debug)]
pub(super) enum EventKind {
    Ready(WorkerReady),
    /// Answers, in the order the worker sent them.
    Done(Vec<Report<JobId>>),
    /// The worker sent something that is not a valid frame; it is being killed.
    Garbage(String),
    /// The process is gone and reaped, with its peak RSS in bytes when known. Always the last
    /// event of a worker.
    Exited {
        exit: ExitReason,
        peak_rss: Option<u64>,
    },
}

/// A started worker process, as the scheduler holds it.
#[derive(Debug)]
pub(super) struct Spawned {
    pub pid: u32,
    /// Encoded frames to send; dropping it closes the worker's socket, which ends the worker.
    pub frames: mpsc::UnboundedSender<Bytes>,
    /// The worker's stdout and stderr capture files, read after a crash.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// How many tasks it has started, read after it died.
    pub starts: StartMarks,
    /// The read ends of the pipes its streamed tasks write to (the worker reads them too):
    /// what it had not read when it died is taken from them into the capture.
    pub pipes: [OwnedFd; 2],
}

/// Starts a worker process and its supervisor and writer tasks.
pub(super) fn spawn_worker(
    command: &WorkerCommand,
    id: WorkerId,
    events: mpsc::UnboundedSender<WorkerEvent>,
    on_output: Option<OutputSink>,
) -> io::Result<Spawned> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let starts = StartMarks::new()?;
    let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Shared with the worker's descriptors: its reader never blocks, nor does the salvage.
    rustix::fs::fcntl_setfl(&out_r, rustix::fs::OFlags::NONBLOCK)?;
    rustix::fs::fcntl_setfl(&err_r, rustix::fs::OFlags::NONBLOCK)?;
    let handed = [out_r.as_fd(), out_w.as_fd(), err_r.as_fd(), err_w.as_fd()];
    starts.hand_over(&ours, &handed)?;
    // Only the worker writes: once it is gone, reading a pipe ends.
    drop((out_w, err_w));
    let stdout = capture::new_capture_file("blitzen-worker-stdout")?;
    let stderr = capture::new_capture_file("blitzen-worker-stderr")?;
    let mut spawn = tokio::process::Command::new(&command.program);
    spawn
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .env(WORKER_ENV, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(stdout.try_clone()?))
        .stderr(Stdio::from(stderr.try_clone()?))
        .process_group(0)
        .kill_on_drop(false);
    let child = spawn.spawn()?;
    // The command holds the worker's end of the socket: drop it, or we would never see EOF.
    drop(spawn);
    let pid = child.id().ok_or_else(|| io::Error::other("worker exited before it was seen"))?;
    ours.set_nonblocking(true)?;
    let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
    let (frames, outbox) = mpsc::unbounded_channel();
    tokio::spawn(write_frames(write, outbox));
    tokio::spawn(supervise(id, pid, child, read, events, on_output));
    debug!(pid, slot = id.slot, "worker process started");
    Ok(Spawned { pid, frames, stdout, stderr, starts, pipes: [out_r, err_r] })
}

/// Kills a worker's whole process group (the worker and everything its tasks started).
pub(super) fn kill_group(pid: u32) {
    signal_group(pid, rustix::process::Signal::KILL);
}

/// Sends `signal` to a worker's whole process group.
pub(super) fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return };
    // ESRCH (already gone) is fine: the supervisor reaps whatever is left.
    let _ = rustix::process::kill_process_group(pid, signal);
}

/// Sends queued frames until the scheduler drops the sender or the worker is gone.
async fn write_frames(mut socket: OwnedWriteHalf, mut outbox: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(chunk) = outbox.recv().await {
        if socket.write_all(&chunk).await.is_err() {
            // The worker died; its supervisor reports that.
            return;
        }
    }
    // Dropping the write half shuts the socket down for writing: the worker sees EOF and exits.
}

/// Reads the worker's frames until its socket closes (handing a streamed task's lines to
/// `on_output`), then makes sure the whole process group
/// is dead, reaps the worker and reports how it ended.
async fn supervise(
    id: WorkerId,
    pid: u32,
    mut child: tokio::process::Child,
    mut socket: OwnedReadHalf,
    events: mpsc::UnboundedSender<WorkerEvent>,
    on_output: Option<OutputSink>,
) {
    let send = |kind| {
        // The scheduler outlives its supervisors; if it is gone, nobody needs the news.
        let _ = events.send(WorkerEvent { worker: id, kind });
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        let mut done = Vec::new();
        loop {
            match decode_frame(&mut buf, MAX_FRAME_LEN) {
                Ok(Some(body)) => match decode_shared::<FromWorker>(&body.freeze()) {
                    Ok(FromWorker::Done(d)) => done.push(d),
                    // Handed on at once: a task's lines go out before its result, which takes
                    // the way through the scheduler.
                    Ok(FromWorker::Output { id, lines }) => {
                        if let Some(on_output) = &on_output {
                            on_output(id, lines);
                        }
                    }
                    Ok(FromWorker::Ready(ready)) => {
                        if !done.is_empty() {
                            send(EventKind::Done(std::mem::take(&mut done)));
                        }
                        send(EventKind::Ready(ready));
                    }
                    Err(e) => {
                        send(EventKind::Garbage(e.to_string()));
                        break 'read;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    send(EventKind::Garbage(e.to_string()));
                    break 'read;
                }
            }
        }
        if !done.is_empty() {
            send(EventKind::Done(done));
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                debug!(pid, error = %e, "worker socket read failed");
                break;
            }
        }
    }
    // The group id is the worker's pid, which cannot be reused before we reap it below.
    kill_group(pid);
    let peak_rss = tokio::task::spawn_blocking(move || peak_rss_at_exit(pid)).await.ok().flatten();
    let exit = match child.wait().await {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(signal)) => ExitReason::Signal(signal),
            (None, None) => ExitReason::Unknown,
        },
        Err(e) => {
            warn!(pid, error = %e, "cannot read a worker's exit status");
            ExitReason::Unknown
        }
    };
    send(EventKind::Exited { exit, peak_rss });
}

/// The peak RSS, in bytes, of the worker `pid` (and of the children it reaped), once it has
/// exited; blocks until then. `waitid` with `WNOWAIT` reads the zombie's resource usage and
/// leaves it to be reaped by its `Child`.
fn peak_rss_at_exit(pid: u32) -> Option<u64> {
    loop {
        // SAFETY: both are plain C structures for which all zero bytes are a valid value.
        #[allow(unsafe_code)]
        let (mut info, mut usage): (libc::siginfo_t, libc::rusage) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: the raw `waitid` system call (the C library's wrapper has no `rusage`
        // argument), given pointers to the two structures above, which outlive the call; with
        // `WNOWAIT` it changes nothing about the child.
        #[allow(unsafe_code)]
        let result = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PID,
                pid as libc::id_t,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOWAIT,
                &mut usage as *mut libc::rusage,
            )
        };
        if result == 0 {
            return u64::try_from(usage.ru_maxrss).ok().map(|kib| kib * 1024);
        }
        if std::io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}
