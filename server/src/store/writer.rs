//! The writer thread: commits the core's batches of [`Change`]s, each commit one transaction and
//! one fsync however many batches gathered meanwhile, and tells the core what is on disk.

use tokio::sync::mpsc;
use tracing::{error, info};

use super::{Change, Store};
use crate::core::Event;

/// Where the core sends its batches of changes: `(number, changes)`.
pub(crate) type Batches = std::sync::mpsc::Sender<(u64, Vec<Change>)>;

/// How often a writer that failed (a full disk) tries again when nothing new comes.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the thread that commits the core's batches. Each batch is `(number, changes)`; the
/// thread commits everything waiting in one transaction and tells the core the highest number
/// committed. When a commit fails (a full disk, an I/O error) it tells the core, keeps the
/// changes, and tries again with what comes next, or every second: nothing accepted is lost,
/// and saving resumes when space returns. The thread ends, closing the database, once every
/// sender is gone and what they sent is committed: join it to know the directory is free.
pub(crate) fn spawn_writer(
    mut store: Store,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<(Batches, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Vec<Change>)>();
    let thread = std::thread::Builder::new().name("blitzen-store".into()).spawn(move || {
        // The batches waiting for a commit, each as the core sent it (not gathered into one
        // vector: a burst of a million tasks is not held twice while it grows).
        let mut pending: Vec<Vec<Change>> = Vec::new();
        let mut last = 0;
        let mut failing = false;
        loop {
            let next = if failing {
                match rx.recv_timeout(RETRY) {
                    Ok(batch) => Some(batch),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(batch) => Some(batch),
                    Err(_) => break,
                }
            };
            for (number, changes) in next.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                last = number;
                pending.push(changes);
            }
            let event = match store.apply_batches(&pending) {
                Ok(()) => {
                    pending.clear();
                    if failing {
                        info!("the data directory takes writes again; everything held is saved");
                    }
                    failing = false;
                    Event::Committed { batch: last }
                }
                Err(e) => {
                    if !failing {
                        error!(error = %e, "cannot save to the data directory; new tasks are refused until it can");
                    }
                    failing = true;
                    Event::SaveFailed { error: e.to_string() }
                }
            };
            // The core may be gone (the server is stopping): what is left still gets committed.
            let _ = events.send(event);
        }
    })?;
    Ok((tx, thread))
}
