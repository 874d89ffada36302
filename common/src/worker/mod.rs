//! The worker process: what a program becomes when a pool re-executes it.
//!
//! A pool starts a worker by running its own binary (`/proc/self/exe`) with [`WORKER_ENV`] set.
//! The program's `main` calls [`worker_main`] first thing; in a worker that call never returns.
//!
//! Descriptors, as the pool sets them up:
//! - fd 0 is one end of a Unix socket pair carrying frames both ways. The worker moves it to a
//!   private descriptor and puts `/dev/null` on fd 0, so a task that reads stdin reads nothing
//!   and a task that prints cannot touch the frames. The first thing on it, before any frame,
//!   is the file of the worker's start counter (see `start_mark`), which the worker
//!   moves before each task, with the two pipes streamed tasks write to.
//! - fd 1 and fd 2 are capture files (see [`crate::capture`]); while a streamed task runs,
//!   pipes to a reader thread of the worker (see `stream`).
//!
//! Threads: the main thread reads [`ToWorker`] frames and runs the tasks one at a time, handing
//! each [`Report`] to the `outbox`, which batches results while tasks stream and sends them
//! at once when the worker goes idle (its flusher thread bounds the wait). A watchdog thread
//! sleeps in `poll` until the pool's end of the socket closes — the pool stopped the worker, or
//! the parent died, even mid-task — and then kills the worker's whole process group, which takes
//! any program a task started along.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Arc;
use std::time::Instant;

use blitzen_protocol::frame::decode_shared;
use blitzen_protocol::{
    Finished, FrameReader, FromWorker, JobId, MAX_FRAME_LEN, Outcome, Report, RunTask, ToWorker,
    WORKER_PROTOCOL_VERSION, WorkerReady,
};

use crate::capture::{self, CAPTURE_LIMIT};
use crate::registry::{self, Registry};
use crate::start_mark::StartCounter;

mod devices;
mod mapped;
mod memory;
mod outbox;
mod stream;

pub use devices::{current as current_devices, variables as device_variables};
pub use memory::{OUT_OF_MEMORY_MESSAGE, note_out_of_memory};
use outbox::Outbox;
use stream::Streamer;

pub use stream::{STREAM_BURST, STREAM_RATE};

/// Set in the environment of a worker process, by the pool that starts it.
pub const WORKER_ENV: &str = "BLITZEN_WORKER";

/// Set in a worker's environment by a pool with a start task
/// (`MulticoreBuilder::on_worker_start`): the name of a task of no arguments the worker runs
/// once before it says it is ready.
pub const WORKER_START_ENV: &str = "BLITZEN_WORKER_START";

/// The exit code of a worker that could not set itself up.
pub(crate) const SETUP_FAILED: i32 = 70;

/// The exit code of a worker that ends itself after a task went past its memory limit without
/// killing it (Python's `MemoryError`): what is left of its memory is not to be trusted.
pub const RETIRED: i32 = 75;

/// Runs the worker loop if this process was started as a worker; returns at once otherwise.
///
/// Call it first thing in `main` of every program that creates a dispatcher or runs a client
/// agent — it is the `if __name__ == '__main__'` guard of Blitzen. In a worker it never returns.
pub fn worker_main() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    // Programs that tasks start must not mistake themselves for workers.
    // SAFETY: called at the top of `main`, before the program has started any thread, so no
    // other thread can be reading the environment.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var(WORKER_ENV);
    }
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("blitzen worker {}: {e}", std::process::id());
            SETUP_FAILED
        }
    };
    std::process::exit(code);
}

/// Whether this process was started as a worker and has not entered [`worker_main`] (which
/// means `main` forgot to call it).
pub fn is_unentered_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

fn run() -> io::Result<()> {
    let channel = io::stdin().as_fd().try_clone_to_owned()?;
    let devnull = File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&devnull)?;
    drop(devnull);
    install_panic_hook();
    let registry = registry::global().map_err(io::Error::other)?;

    let socket = UnixStream::from(channel);
    let (mut starts, pipes) = StartCounter::receive(&socket)?;
    let mut pipes = Some(pipes);
    let watched = socket.try_clone()?;
    let outbox = Arc::new(Outbox::new(socket.try_clone()?));
    if let Err(e) = run_start_task(registry) {
        // Exits with the socket still open: the pool sees this exit code, not a hang-up it
        // answers with SIGKILL.
        eprintln!("blitzen worker {}: {e}", std::process::id());
        std::process::exit(SETUP_FAILED);
    }
    let ready = FromWorker::Ready(WorkerReady {
        pid: std::process::id(),
        version: WORKER_PROTOCOL_VERSION,
    });
    outbox.push(&ready).map_err(io::Error::other)?;
    outbox.flush()?;
    std::thread::Builder::new()
        .name("blitzen-watchdog".into())
        .spawn(move || watch_for_hangup(watched))?;
    let flusher = outbox.clone();
    std::thread::Builder::new()
        .name("blitzen-flusher".into())
        .spawn(move || flusher.run_flusher())?;

    let mut frames = FrameReader::new(socket, MAX_FRAME_LEN);
    // Made at the first streamed task.
    let mut streamer: Option<Streamer> = None;
    loop {
        if !frames.has_frame() {
            // About to wait for work: nothing may stay behind.
            outbox.flush()?;
        }
        let task = match frames.read_frame() {
            Ok(Some(body)) => match decode_shared::<ToWorker>(&body.freeze()) {
                Ok(ToWorker::Run(task)) => task,
                Err(e) => return Err(io::Error::other(format!("bad frame from the pool: {e}"))),
            },
            // The pool closed the socket: it wants this worker gone.
            Ok(None) => end_process_group(),
            Err(e) => return Err(io::Error::other(format!("reading from the pool: {e}"))),
        };
        starts.start();
        if task.stream
            && streamer.is_none()
            && let Some(pipes) = pipes.take()
        {
            streamer = Some(Streamer::start(outbox.clone(), pipes)?);
        }
        let streaming = match &streamer {
            Some(s) if task.stream => {
                s.begin(task.id)?;
                Some(s)
            }
            Some(s) => {
                s.pause()?;
                None
            }
            None => None,
        };
        let captures = streamer.as_ref().map(Streamer::captures);
        let (done, retire) = match task.memory_limit {
            None => (execute(registry, task, streaming, captures), false),
            Some(limit) => execute_within(registry, task, limit, streaming, captures),
        };
        let msg = FromWorker::Done(done);
        if let Err(e) = outbox.push(&msg)
            && let FromWorker::Done(done) = msg
        {
            // The value is too large for a frame: report that instead of the value.
            let message = format!("the task's result cannot be sent: {e}");
            let run = Finished { outcome: Outcome::BadOutput { message }, ..done.run };
            let fallback = Report { id: done.id, worker: None, run };
            outbox.push(&FromWorker::Done(fallback)).map_err(io::Error::other)?;
        }
        if retire {
            outbox.flush()?;
            std::process::exit(RETIRED);
        }
    }
}

/// Runs the start task [`WORKER_START_ENV`] names, if any; its failure (an `Err`, a panic, a
/// task this program does not have) is the worker's failure to start.
fn run_start_task(registry: &Registry) -> io::Result<()> {
    let Some(name) = std::env::var_os(WORKER_START_ENV) else { return Ok(()) };
    let name = name.to_string_lossy();
    let failed = |why: String| io::Error::other(format!("its start task `{name}` {why}"));
    let entry = registry
        .get(&name)
        .ok_or_else(|| failed("is not a #[blitzen::task] of this program".into()))?;
    let args = crate::task::encode_value(&()).map_err(|e| failed(e.to_string()))?;
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (entry.invoke)(&args)));
    // What it printed is not the first task's.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    let _ = capture::take(rustix::stdio::stdout(), CAPTURE_LIMIT);
    let _ = capture::take(rustix::stdio::stderr(), CAPTURE_LIMIT);
    match outcome {
        Ok(Outcome::Value(_)) => Ok(()),
        Ok(Outcome::Returned { message, .. }) => {
            Err(failed(format!("returned an error: {message}")))
        }
        Ok(Outcome::BadArguments { .. }) => {
            Err(failed("takes arguments; it must take none".into()))
        }
        Ok(other) => Err(failed(format!("failed: {other:?}"))),
        Err(_) => {
            let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
            let (message, location, _) = recorded.unwrap_or_default();
            let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
            Err(failed(format!("panicked{at}: {message}")))
        }
    }
}

/// Runs a task under its memory limit (see [`memory`]); says whether the worker must retire.
fn execute_within(
    registry: &Registry,
    task: RunTask,
    limit: u64,
    streaming: Option<&Streamer>,
    captures: Option<[BorrowedFd<'_>; 2]>,
) -> (Report<JobId>, bool) {
    let id = task.id;
    let guard = match memory::Limit::set(limit) {
        Ok(guard) => guard,
        Err(e) => {
            let reason = format!("its worker could not set its memory limit: {e}");
            if let Some(s) = streaming {
                s.end();
            }
            return (Report::unstarted(id, Outcome::Lost { reason }), false);
        }
    };
    let mut done = execute(registry, task, streaming, captures);
    let (out_of_memory, peak) = guard.lift();
    if out_of_memory {
        done.run.outcome = Outcome::MemoryExceeded { limit, peak };
    }
    (done, out_of_memory)
}

/// Blocks until the pool's end of the socket is closed, then ends the worker's process group.
/// Asks `poll` for hang-ups only, so data arriving on the socket does not wake it.
fn watch_for_hangup(socket: UnixStream) {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&socket, PollFlags::RDHUP)];
    loop {
        match poll(&mut fds, None) {
            Ok(_) if !fds[0].revents().is_empty() => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    end_process_group()
}

/// Kills every process of the worker's group (the worker included): the pool is gone or wants
/// the worker gone, and nothing a task started may outlive it.
fn end_process_group() -> ! {
    let _ = rustix::process::kill_current_process_group(rustix::process::Signal::KILL);
    std::process::exit(0)
}

/// Runs one task and collects its outcome and output (ending its streaming, if it streams)
/// from the capture files: fd 1 and fd 2, or `captures` once the worker has streamed.
fn execute(
    registry: &Registry,
    mut task: RunTask,
    streaming: Option<&Streamer>,
    captures: Option<[BorrowedFd<'_>; 2]>,
) -> Report<JobId> {
    let started = Instant::now();
    // Arguments with shared values among them are made here, the values mapped from files.
    let unmapped = match task.inputs.take().map(|inputs| mapped::assemble(&inputs)) {
        Some(Ok(args)) => {
            task.args = args;
            None
        }
        Some(Err(e)) => Some(format!("its shared input could not be read on its worker: {e}")),
        None => None,
    };
    let outcome = match registry.get(&task.name) {
        _ if unmapped.is_some() => Outcome::Lost { reason: unmapped.unwrap_or_default() },
        None => Outcome::UnknownTask,
        Some(entry) if entry.fingerprint != task.fingerprint => {
            Outcome::SignatureMismatch { worker_signature: entry.signature.to_string() }
        }
        Some(entry) => {
            LAST_PANIC.with(|p| p.borrow_mut().take());
            // A large `Blob` among the arguments is a slice of them, not a copy (of the pipe's
            // frame, or of a shared value's mapping).
            let invoke = || {
                // The devices it holds are named in its environment while it runs.
                let _named = (!task.devices.is_empty()).then(|| devices::Named::set(&task.devices));
                blitzen_protocol::frame::with_shared_frame(&task.args, || {
                    (entry.invoke)(&task.args)
                })
            };
            match std::panic::catch_unwind(AssertUnwindSafe(invoke)) {
                Ok(outcome) => outcome,
                Err(payload) => {
                    let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
                    let (message, location, backtrace) = recorded.unwrap_or_else(|| {
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic with a non-string payload".into());
                        (message, None, None)
                    });
                    Outcome::Panicked { message, location, backtrace }
                }
            }
        }
    };
    let elapsed_us = started.elapsed().as_micros() as u64;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    let unstreamed = streaming.map_or([0; 2], Streamer::end);
    let [out, err] = captures.unwrap_or([rustix::stdio::stdout(), rustix::stdio::stderr()]);
    let mut stdout = capture::take(out, CAPTURE_LIMIT).unwrap_or_default();
    let mut stderr = capture::take(err, CAPTURE_LIMIT).unwrap_or_default();
    (stdout.unstreamed, stderr.unstreamed) = (unstreamed[0], unstreamed[1]);
    Report { id: task.id, worker: None, run: Finished { outcome, stdout, stderr, elapsed_us } }
}

/// What the panic hook records: message, location, backtrace.
type PanicRecord = (String, Option<String>, Option<String>);

thread_local! {
    /// The last panic on this thread, recorded by the panic hook.
    static LAST_PANIC: RefCell<Option<PanicRecord>> = const { RefCell::new(None) };
}

/// Records each panic's message, location and (if `RUST_BACKTRACE` asks) backtrace for the
/// task's error, instead of printing them into the task's captured stderr. Panics on threads a
/// task started are printed as usual: they are not the task's own failure.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    let main_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        if std::thread::current().id() != main_thread {
            return default(info);
        }
        let message = info
            .payload_as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "a panic with a non-string payload".into());
        let location = info.location().map(|l| l.to_string());
        let trace = Backtrace::capture();
        let backtrace = (trace.status() == BacktraceStatus::Captured).then(|| trace.to_string());
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location, backtrace)));
    }));
}
