//! The data directory: the server's state on disk, in a redb database, so that a restart (even
//! `kill -9`) keeps the server's identity, its sessions, their queued tasks and their results
//! not yet fetched.
//!
//! The core describes what changed in a turn as [`Change`]s and hands them to a writer thread
//! ([`spawn_writer`]), which commits whatever has gathered in one transaction — one fsync per
//! batch, not per task — and reports each batch committed. The core tells a driver its tasks
//! are accepted, and an agent its results are received, only once the batch holding them is
//! committed.

use std::path::{Path, PathBuf};

use blitzen_protocol::cluster::{TaskKind, TaskReport};
use blitzen_protocol::ids::ServerId;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::core::Event;

/// The database file inside the data directory.
const FILE: &str = "blitzen.redb";

/// `"server_id"` → the server's id, the same across restarts.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Session name → [`SessionRecord`].
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (session, driver task id) → [`TaskRecord`], for tasks queued or running.
const TASKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tasks");
/// (session, driver task id) → the [`TaskReport`] not yet acknowledged by the driver.
const RESULTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("results");

/// The data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot be created or is not a directory.
    #[error("cannot use {path} as the data directory: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another running server holds the database.
    #[error("the data directory {0} is in use by another running server")]
    InUse(PathBuf),
    /// The database cannot be opened or read (another format or version, corrupt, unreadable).
    #[error("cannot open the database in {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
    /// A write failed (a full disk, an I/O error).
    #[error("cannot write to the data directory: {0}")]
    Write(String),
}

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// Its driver's name, for logs.
    pub name: String,
    /// Tasks it submitted that the server took.
    pub accepted: u64,
    /// Above every task id it used.
    pub next_id: u64,
}

/// A task as stored: what it takes to queue it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskRecord {
    pub kind: TaskKind,
    #[serde(with = "serde_bytes_compat")]
    pub args: Bytes,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    pub unrunnable_limit_ms: u32,
    pub seq: u64,
    pub attempts: u32,
}

/// `Bytes` as MessagePack binary.
mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        bytes::Bytes::deserialize(d)
    }
}

/// One change of state, as the core records it.
#[derive(Debug)]
pub(crate) enum Change {
    /// A session's counts (created or updated).
    Session { session: String, record: SessionRecord },
    /// A task taken from a driver.
    Task { session: String, id: u64, record: TaskRecord },
    /// A task ended (its result, if any, is a `Result`).
    TaskEnded { session: String, id: u64 },
    /// A result held for a driver.
    Result { session: String, id: u64, report: TaskReport },
    /// A driver acknowledged a result.
    ResultAcked { session: String, id: u64 },
    /// A session is over: it goes with its tasks and results.
    SessionEnded { session: String },
}

/// What a data directory holds at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub sessions: Vec<(String, SessionRecord)>,
    pub tasks: Vec<(String, u64, TaskRecord)>,
    pub results: Vec<(String, TaskReport)>,
}

/// An open data directory.
pub(crate) struct Store {
    /// `None` after a failed write: redb wants a database that hit an I/O error reopened.
    db: Option<Database>,
    /// The database file.
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`; returns it with the server's id and what it
    /// holds. Nothing is overwritten when it cannot be opened.
    pub(crate) fn open(
        dir: &Path,
        fresh_id: ServerId,
    ) -> Result<(Self, ServerId, Loaded), StoreError> {
        let directory = |source| StoreError::Directory { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(directory)?;
        let path = dir.join(FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(dir.to_path_buf()));
            }
            Err(e) => return Err(StoreError::Open { path, message: e.to_string() }),
        };
        let open = |e: redb::Error| StoreError::Open { path: path.clone(), message: e.to_string() };
        let store = Self { db: Some(db), path: path.clone() };
        let server_id = store.server_id(fresh_id).map_err(open)?;
        let loaded = store.load().map_err(open)?;
        Ok((store, server_id, loaded))
    }

    /// The stored server id, or `fresh` stored as it.
    fn server_id(&self, fresh: ServerId) -> Result<ServerId, redb::Error> {
        let txn = self.db()?.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get("server_id")?.map(|v| v.value());
            match stored {
                Some(id) => ServerId::new(id),
                None => {
                    meta.insert("server_id", fresh.get())?;
                    fresh
                }
            }
        };
        // The other tables exist from now on, so a read finds them.
        txn.open_table(SESSIONS)?;
        txn.open_table(TASKS)?;
        txn.open_table(RESULTS)?;
        txn.commit()?;
        Ok(id)
    }

    fn db(&self) -> Result<&Database, redb::Error> {
        self.db.as_ref().ok_or_else(|| redb::Error::Corrupted("the database is closed".into()))
    }

    fn load(&self) -> Result<Loaded, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let mut loaded = Loaded::default();
        let corrupt = |what: &str, e: rmp_serde::decode::Error| {
            redb::Error::Corrupted(format!("a stored {what} does not decode: {e}"))
        };
        for entry in txn.open_table(SESSIONS)?.iter()? {
            let (name, record) = entry?;
            let record =
                rmp_serde::from_slice(record.value()).map_err(|e| corrupt("session", e))?;
            loaded.sessions.push((name.value().to_string(), record));
        }
        for entry in txn.open_table(TASKS)?.iter()? {
            let (key, record) = entry?;
            let (session, id) = key.value();
            let record = rmp_serde::from_slice(record.value()).map_err(|e| corrupt("task", e))?;
            loaded.tasks.push((session.to_string(), id, record));
        }
        for entry in txn.open_table(RESULTS)?.iter()? {
            let (key, report) = entry?;
            let report = rmp_serde::from_slice(report.value()).map_err(|e| corrupt("result", e))?;
            loaded.results.push((key.value().0.to_string(), report));
        }
        Ok(loaded)
    }

    /// Commits `changes` in one transaction. After a failure the database is closed, and the
    /// next call opens it again first (redb keeps nothing of a transaction that failed).
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if self.db.is_none() {
            let db = Database::create(&self.path).map_err(|e| StoreError::Write(e.to_string()))?;
            self.db = Some(db);
        }
        let result = self.apply_inner(changes).map_err(|e| StoreError::Write(e.to_string()));
        if result.is_err() {
            self.db = None;
        }
        result
    }

    fn apply_inner(&self, changes: &[Change]) -> Result<(), redb::Error> {
        let encode = |value: &dyn erased::Encode| value.encode();
        let txn = self.db()?.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut tasks = txn.open_table(TASKS)?;
            let mut results = txn.open_table(RESULTS)?;
            for change in changes {
                match change {
                    Change::Session { session, record } => {
                        sessions.insert(session.as_str(), encode(record)?.as_slice())?;
                    }
                    Change::Task { session, id, record } => {
                        tasks.insert((session.as_str(), *id), encode(record)?.as_slice())?;
                    }
                    Change::TaskEnded { session, id } => {
                        tasks.remove((session.as_str(), *id))?;
                    }
                    Change::Result { session, id, report } => {
                        results.insert((session.as_str(), *id), encode(report)?.as_slice())?;
                    }
                    Change::ResultAcked { session, id } => {
                        results.remove((session.as_str(), *id))?;
                    }
                    Change::SessionEnded { session } => {
                        sessions.remove(session.as_str())?;
                        let all = (session.as_str(), 0)..=(session.as_str(), u64::MAX);
                        tasks.retain_in(all.clone(), |_, _| false)?;
                        results.retain_in(all, |_, _| false)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Encoding the stored values, one function for all three kinds.
mod erased {
    /// A value stored as MessagePack.
    pub(super) trait Encode {
        fn encode(&self) -> Result<Vec<u8>, redb::Error>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<Vec<u8>, redb::Error> {
            rmp_serde::to_vec_named(self).map_err(|e| redb::Error::Corrupted(e.to_string()))
        }
    }
}

/// Where the core sends its batches of changes: `(number, changes)`.
pub(crate) type Batches = std::sync::mpsc::Sender<(u64, Vec<Change>)>;

/// How often a writer that failed (a full disk) tries again when nothing new comes.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the thread that commits the core's batches. Each batch is `(number, changes)`; the
/// thread commits everything waiting in one transaction and tells the core the highest number
/// committed. When a commit fails (a full disk, an I/O error) it tells the core, keeps the
/// changes, and tries again with what comes next, or every second: nothing accepted is lost,
/// and saving resumes when space returns.
pub(crate) fn spawn_writer(
    mut store: Store,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Batches> {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Vec<Change>)>();
    std::thread::Builder::new().name("blitzen-store".into()).spawn(move || {
        let mut pending: Vec<Change> = Vec::new();
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
                pending.extend(changes);
            }
            let event = match store.apply(&pending) {
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
            if events.send(event).is_err() {
                break;
            }
        }
    })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::Outcome;
    use blitzen_protocol::ids::DriverTaskId;

    fn dir(label: &str) -> PathBuf {
        std::env::temp_dir().join(format!("blitzen-store-{}-{label}", std::process::id()))
    }

    fn record(seq: u64) -> TaskRecord {
        TaskRecord {
            kind: TaskKind { name: "t".into(), fingerprint: 1, signature: "fn t()".into() },
            args: Bytes::from_static(b"\x01\x02"),
            timeout_ms: Some(5),
            retries: 1,
            unrunnable_limit_ms: 0,
            seq,
            attempts: 0,
        }
    }

    #[test]
    fn what_is_committed_is_there_after_reopening_and_the_id_stays() {
        let path = dir("reopen");
        let _ = std::fs::remove_dir_all(&path);
        let (mut store, id, loaded) = Store::open(&path, ServerId::new(7)).expect("opens");
        assert_eq!(id, ServerId::new(7));
        assert!(loaded.tasks.is_empty());
        let s = || "s1".to_string();
        let report =
            TaskReport::unstarted(DriverTaskId::new(2), Outcome::Lost { reason: "r".into() });
        store
            .apply(&[
                Change::Session {
                    session: s(),
                    record: SessionRecord { name: "d".into(), accepted: 3, next_id: 4 },
                },
                Change::Task { session: s(), id: 1, record: record(10) },
                Change::Task { session: s(), id: 2, record: record(11) },
                Change::Task { session: s(), id: 3, record: record(12) },
                Change::TaskEnded { session: s(), id: 2 },
                Change::Result { session: s(), id: 2, report },
                Change::Session {
                    session: "gone".into(),
                    record: SessionRecord { name: "g".into(), accepted: 1, next_id: 2 },
                },
                Change::Task { session: "gone".into(), id: 1, record: record(13) },
                Change::SessionEnded { session: "gone".into() },
            ])
            .expect("commits");
        assert!(matches!(Store::open(&path, ServerId::new(8)), Err(StoreError::InUse(_))));
        drop(store);
        let (_store, id, loaded) = Store::open(&path, ServerId::new(8)).expect("reopens");
        assert_eq!(id, ServerId::new(7), "the server keeps its id");
        assert_eq!(loaded.sessions.len(), 1);
        assert_eq!(loaded.sessions[0].1.accepted, 3);
        let ids: Vec<u64> = loaded.tasks.iter().map(|(_, id, _)| *id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(loaded.tasks[0].2.args, Bytes::from_static(b"\x01\x02"));
        assert_eq!(loaded.results.len(), 1);
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn a_file_of_another_format_is_refused_untouched() {
        let path = dir("garbage");
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("dir");
        std::fs::write(path.join(FILE), b"not a database at all").expect("write");
        let err = Store::open(&path, ServerId::new(1)).expect_err("refused");
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert_eq!(std::fs::read(path.join(FILE)).expect("read"), b"not a database at all");
        let _ = std::fs::remove_dir_all(&path);
    }
}
