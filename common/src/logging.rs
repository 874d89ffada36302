//! Blitzen's logging: `tracing` events from every Blitzen crate, INFO by default, to stderr or a
//! file, controllable at run time — `blitzen::logging` re-exports this module.
//!
//! The subscriber is installed on first use of this module (a dispatcher or a binary calls
//! [`install`]) and only if the program has not installed one of its own; then these functions
//! report [`LoggingError::Foreign`] and the program's subscriber decides. `RUST_LOG`, when set,
//! replaces the default filter.
//!
//! Files are written by a background thread (`tracing-appender`), so logging never blocks a
//! runtime thread on the disk; [`flush`] waits until everything is written.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The crates whose events the level applies to; others log warnings and errors only.
const CRATES: [&str; 7] = [
    "blitzen",
    "blitzen_common",
    "blitzen_server",
    "blitzen_client",
    "blitzen_net",
    "blitzen_protocol",
    "quickstart",
];

/// Logging could not be changed.
#[derive(thiserror::Error)]
pub enum LoggingError {
    /// The program installed its own `tracing` subscriber, which Blitzen leaves alone.
    #[error("the program installed its own tracing subscriber; configure logging there")]
    Foreign,
    /// The level is not a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a
    /// `RUST_LOG`-style directive.
    #[error("invalid log level `{level}`: {message}")]
    BadLevel {
        /// What was given.
        level: String,
        /// Why it was refused.
        message: String,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    File {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for LoggingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Where events go.
enum Target {
    Stderr,
    /// The guard flushes the file's background writer when dropped.
    File {
        writer: NonBlocking,
        _guard: WorkerGuard,
    },
}

struct Control {
    filter: reload::Handle<EnvFilter, Registry>,
    /// The level directive in force while enabled.
    level: Mutex<String>,
    enabled: Mutex<bool>,
    target: Arc<Mutex<Target>>,
}

static CONTROL: OnceLock<Option<Control>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Installs Blitzen's subscriber, at INFO (or `RUST_LOG`), unless the program has one already.
/// Idempotent; every function of this module calls it.
pub fn install() {
    let _ = control();
}

fn control() -> Result<&'static Control, LoggingError> {
    CONTROL
        .get_or_init(|| {
            let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
            let filter = build_filter(&level)
                .or_else(|_| build_filter("info"))
                .unwrap_or_else(|_| EnvFilter::new("info"));
            let (filter, handle) = reload::Layer::new(filter);
            let target = Arc::new(Mutex::new(Target::Stderr));
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(SwitchWriter(target.clone()))
                .with_ansi(false);
            let subscriber = Registry::default().with(filter).with(layer);
            tracing::subscriber::set_global_default(subscriber).ok().map(|()| Control {
                filter: handle,
                level: Mutex::new(level),
                enabled: Mutex::new(true),
                target,
            })
        })
        .as_ref()
        .ok_or(LoggingError::Foreign)
}

/// A handle to Blitzen's logging (the seed's `get_logger()`); its methods are the functions of
/// this module.
#[derive(Debug, Clone, Copy)]
pub struct Logger;

/// Blitzen's logger.
pub fn get_logger() -> Logger {
    install();
    Logger
}

impl Logger {
    /// See [`set_loglevel`].
    pub fn set_level(&self, level: &str) -> Result<(), LoggingError> {
        set_loglevel(level)
    }
    /// See [`set_logfile`].
    pub fn set_file(&self, path: impl AsRef<Path>) -> Result<(), LoggingError> {
        set_logfile(path)
    }
    /// See [`disable`].
    pub fn disable(&self) -> Result<(), LoggingError> {
        disable()
    }
    /// See [`enable`].
    pub fn enable(&self) -> Result<(), LoggingError> {
        enable()
    }
    /// The level directive in force (`off` while disabled).
    pub fn level(&self) -> Result<String, LoggingError> {
        let c = control()?;
        Ok(if *lock(&c.enabled) { lock(&c.level).clone() } else { "off".into() })
    }
}

/// Sets the level: `error`, `warn`, `info`, `debug`, `trace` or `off` for Blitzen's crates (other
/// crates stay at `warn`), or any `RUST_LOG`-style directive.
pub fn set_loglevel(level: &str) -> Result<(), LoggingError> {
    let c = control()?;
    let filter = build_filter(level)?;
    *lock(&c.level) = level.to_string();
    if *lock(&c.enabled) {
        let _ = c.filter.reload(filter);
    }
    Ok(())
}

/// Sends events to `path` (appended to; created if missing) instead of stderr.
pub fn set_logfile(path: impl AsRef<Path>) -> Result<(), LoggingError> {
    let c = control()?;
    let path = path.as_ref();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LoggingError::File { path: path.display().to_string(), source })?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    // The previous file's guard is dropped here, which flushes it.
    *lock(&c.target) = Target::File { writer, _guard: guard };
    Ok(())
}

/// Whether Blitzen's log goes to a file (see [`set_logfile`]) rather than stderr.
pub fn writes_to_file() -> bool {
    control().is_ok_and(|c| matches!(&*lock(&c.target), Target::File { .. }))
}

/// Stops all of Blitzen's log output.
pub fn disable() -> Result<(), LoggingError> {
    let c = control()?;
    *lock(&c.enabled) = false;
    let _ = c.filter.reload(EnvFilter::new("off"));
    Ok(())
}

/// Restores log output at the level set before [`disable`].
pub fn enable() -> Result<(), LoggingError> {
    let c = control()?;
    *lock(&c.enabled) = true;
    let filter = build_filter(&lock(&c.level))?;
    let _ = c.filter.reload(filter);
    Ok(())
}

/// Waits until every event is written and goes back to stderr. Call it before a program that
/// logs to a file exits (returning from `main` does not run the destructors of statics).
pub fn flush() {
    if let Ok(c) = control() {
        *lock(&c.target) = Target::Stderr;
    }
}

/// The level names [`set_loglevel`] takes (`warning` is `warn`).
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a level as [`set_loglevel`] would, without changing anything: for a command-line
/// flag's parser, so that a typo is refused before the program starts.
pub fn check_level(level: &str) -> Result<String, LoggingError> {
    build_filter(level).map(|_| level.to_string())
}

fn build_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    let bad = |message: String| LoggingError::BadLevel { level: level.to_string(), message };
    let mut lower = level.trim().to_ascii_lowercase();
    if lower == "warning" {
        lower = "warn".into();
    }
    let directive = if LEVELS.contains(&lower.as_str()) {
        let mut d = String::from("warn");
        for krate in CRATES {
            d.push_str(&format!(",{krate}={lower}"));
        }
        d
    } else if lower.is_empty() {
        return Err(bad(format!("use one of {}", LEVELS.join(", "))));
    } else {
        // A directive: `target=level` parts, or a bare level for every crate. A bare word that
        // is not a level would be read as a target and silence everything else.
        let stray = lower
            .split(',')
            .map(str::trim)
            .find(|part| !part.contains('=') && !LEVELS.contains(part) && !part.is_empty());
        if let Some(word) = stray {
            return Err(bad(format!(
                "`{word}` is not a level; use one of {}, or a RUST_LOG-style directive such as \
                 `blitzen=debug,warn`",
                LEVELS.join(", ")
            )));
        }
        level.to_string()
    };
    EnvFilter::builder().parse(directive).map_err(|e| bad(e.to_string()))
}

/// Writes each event to the current target.
struct SwitchWriter(Arc<Mutex<Target>>);

enum Sink {
    Stderr,
    File(NonBlocking),
}

impl<'a> MakeWriter<'a> for SwitchWriter {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter(match &*lock(&self.0) {
            Target::Stderr => Sink::Stderr,
            Target::File { writer, .. } => Sink::File(writer.clone()),
        })
    }
}

/// One event's writer.
struct SinkWriter(Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Sink::Stderr => io::stderr().write(buf),
            Sink::File(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Sink::Stderr => io::stderr().flush(),
            Sink::File(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse_and_garbage_does_not() {
        for ok in ["info", "DEBUG", "off", "warning", "blitzen=trace,warn"] {
            assert!(build_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "blitzen=loud", "bogus", "debg", "info,bogus"] {
            match build_filter(bad) {
                Err(e @ LoggingError::BadLevel { .. }) => {
                    assert!(
                        e.to_string().contains("\"debug\"")
                            || e.to_string().contains("debug, trace"),
                        "{e}"
                    )
                }
                other => panic!("`{bad}` accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn level_file_disable_enable_work_end_to_end() {
        let dir = std::env::temp_dir().join(format!("blitzen-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("test.log");
        let logger = get_logger();
        logger.set_file(&path).expect("file");
        logger.set_level("debug").expect("level");
        tracing::debug!(target: "blitzen_common", "visible at debug");
        logger.disable().expect("disable");
        assert_eq!(logger.level().expect("level"), "off");
        tracing::error!(target: "blitzen_common", "hidden while disabled");
        logger.enable().expect("enable");
        logger.set_level("info").expect("level");
        tracing::debug!(target: "blitzen_common", "hidden at info");
        tracing::info!(target: "blitzen_common", "visible at info");
        flush();
        let text = std::fs::read_to_string(&path).expect("log written");
        assert!(text.contains("visible at debug") && text.contains("visible at info"), "{text}");
        assert!(!text.contains("hidden"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
