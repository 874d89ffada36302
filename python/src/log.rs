//! Blitzen's `tracing` events, forwarded to Python's `logging`.
//!
//! [`forward_logs`] installs a `tracing` subscriber whose one layer formats each event of a
//! Blitzen crate at or above the threshold ([`set_log_threshold`], which `blitzen.logging`
//! keeps equal to its logger's level) and queues it. A thread of its own takes the interpreter
//! lock and hands each record to `logging.getLogger("blitzen.<crate>")`; no thread that emits
//! an event ever waits for the lock, so logging cannot deadlock against Python code.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::thread::JoinHandle;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The least severe level forwarded, as a Python logging level (10 DEBUG … 50 CRITICAL; above
/// 50: nothing).
static THRESHOLD: AtomicU8 = AtomicU8::new(20);

/// Where the layer queues records for the forwarding thread.
static QUEUE: OnceLock<mpsc::Sender<Message>> = OnceLock::new();

/// The forwarding thread, until [`stop_forwarding`] has joined it.
static FORWARDER: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

/// Set by [`stop_forwarding`]: events are dropped from then on.
static STOPPED: AtomicBool = AtomicBool::new(false);

enum Message {
    Record(Record),
    /// Deliver what came before, then end.
    Stop,
}

/// One event, ready for Python.
struct Record {
    level: u8,
    logger: String,
    message: String,
}

fn python_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// Sets the least severe level forwarded (a Python logging level; 0 forwards everything).
#[pyfunction]
pub(crate) fn set_log_threshold(level: u8) {
    THRESHOLD.store(level, Ordering::Relaxed);
}

/// Starts forwarding Blitzen's events to Python's `logging`; idempotent. Does nothing when the
/// process already has a `tracing` subscriber.
#[pyfunction]
pub(crate) fn forward_logs() -> PyResult<()> {
    if QUEUE.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Message>();
    if QUEUE.set(tx).is_err() {
        return Ok(());
    }
    let subscriber = tracing_subscriber::registry().with(Bridge);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return Ok(());
    }
    let forwarder = std::thread::Builder::new()
        .name("blitzen-log-bridge".into())
        .spawn(move || {
            while let Ok(Message::Record(record)) = rx.recv() {
                if Python::try_attach(|py| deliver(py, &record)).is_none() {
                    return;
                }
            }
        })
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    *FORWARDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(forwarder);
    Ok(())
}

/// Delivers the records queued so far, then stops forwarding: later events are dropped. The
/// package calls it at exit (`atexit`), while the interpreter is whole: a thread that takes
/// the interpreter lock once finalization has begun is ended by the interpreter, which a Rust
/// thread does not survive.
#[pyfunction]
pub(crate) fn stop_forwarding(py: Python<'_>) {
    STOPPED.store(true, Ordering::Release);
    let Some(queue) = QUEUE.get() else { return };
    let _ = queue.send(Message::Stop);
    let forwarder = FORWARDER.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(forwarder) = forwarder {
        // It needs the interpreter lock for the records before the stop.
        let _ = py.detach(|| forwarder.join());
    }
}

fn deliver(py: Python<'_>, record: &Record) {
    let logged = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", (&record.logger,)))
        .and_then(|logger| logger.call_method1("log", (record.level, &record.message)));
    if let Err(e) = logged {
        e.print(py);
    }
}

/// The layer: filters by crate and threshold, formats, queues.
struct Bridge;

impl<S: Subscriber> Layer<S> for Bridge {
    /// Blitzen's callsites are asked each time (the threshold changes at run time); others never.
    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> Interest {
        if metadata.target().starts_with("blitzen") {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target().starts_with("blitzen")
            && python_level(metadata.level()) >= THRESHOLD.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(queue) = QUEUE.get() else { return };
        if STOPPED.load(Ordering::Acquire) {
            return;
        }
        let metadata = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        // `blitzen_server::core::steer` → `blitzen.server`.
        let krate = metadata.target().split("::").next().unwrap_or("blitzen");
        let logger = match krate.strip_prefix("blitzen_") {
            Some(part) => format!("blitzen.{part}"),
            None => "blitzen".to_string(),
        };
        let _ = queue.send(Message::Record(Record {
            level: python_level(metadata.level()),
            logger,
            message: text.finish(),
        }));
    }
}

/// An event as one line: its message, then `key=value` for each field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
