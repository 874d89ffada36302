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

use blitzen_protocol::Report;
use blitzen_protocol::cluster::TaskKind;
use blitzen_protocol::ids::{DriverTaskId, ServerId};
use blitzen_protocol::inputs::Inputs;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod writer;

pub(crate) use writer::{Batches, spawn_writer};

/// The database file inside the data directory.
const FILE: &str = "blitzen.redb";

/// Memory the database may use to cache its pages (redb's default is 1 GiB): the queue itself is
/// in the core's memory, so the cache only speeds up writes and the reads at start.
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) the database file with this server's settings.
fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// The version of the tables' layout: a directory written with another is refused untouched.
const FORMAT: u64 = 1;

/// `"format"` → [`FORMAT`]; `"server_id"` → the server's id, the same across restarts;
/// `"next_seq"` → above every task's `seq` so far, so numbers are never reused;
/// `"reattach_used_ms"` → while restored tasks are held for agents to re-attach, how much of the
/// re-attach grace the runs of this hold have used so far, kept across their restarts.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The server's kind number → the [`TaskKind`]: every kind it met, numbered densely in the order
/// it met them, which a restarted server keeps (so a [`TaskRecord`] names its kind by number).
const KINDS: TableDefinition<u32, &[u8]> = TableDefinition::new("kinds");
/// Agent id → its host: the agents connected, which a restarted server waits for to re-attach.
const AGENTS: TableDefinition<u64, &str> = TableDefinition::new("agents");
/// (session, driver task id) → attempts, for the tasks whose agent vanished while holding them.
const ATTEMPTS: TableDefinition<(&str, u64), u32> = TableDefinition::new("attempts");
/// Session name → [`SessionRecord`].
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (session, driver task id) → [`TaskRecord`], for tasks queued or running.
const TASKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tasks");
/// (session, driver task id) → the [`Report<DriverTaskId>`] not yet acknowledged by the driver.
const RESULTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("results");
/// Values shared among a session's tasks, by session and the driver's number for each:
/// [`SharedRecord`]s (a directory of an older version has no such table until it is written).
const SHARES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("shares");

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
    /// The kind's number (see [`KINDS`]).
    pub kind: u32,
    #[serde(with = "serde_bytes_compat")]
    pub args: Bytes,
    pub timeout_ms: Option<u64>,
    pub retries: u32,
    pub unrunnable_limit_ms: u32,
    pub seq: u64,
    /// What it still waits for, while it waits for other tasks (then `args` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<Inputs>>,
    /// Times an agent holding it vanished (kept in [`ATTEMPTS`], not here).
    #[serde(skip)]
    pub attempts: u32,
}

/// A shared value as stored: the server's key for it, and its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SharedRecord {
    pub key: u64,
    #[serde(with = "serde_bytes_compat")]
    pub bytes: Bytes,
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
    /// Tasks taken from a driver in one submission, by the driver's id: one session name for
    /// all of them (a million queued tasks must not cost a million copies of it).
    Tasks { session: String, tasks: Vec<(u64, TaskRecord)> },
    /// A task ended (its result, if any, is a `Result`); `attempted` if it has attempts saved.
    TaskEnded { session: String, id: u64, attempted: bool },
    /// A task's agent vanished while holding it: it has been handed out this many times.
    Attempts { session: String, id: u64, attempts: u32 },
    /// A kind met for the first time, with its number (the next one).
    Kind { number: u32, kind: Box<TaskKind> },
    /// An agent connected.
    Agent { id: u64, host: String },
    /// An agent left (not when the server stops: then it is waited for after the restart).
    AgentGone { id: u64 },
    /// A result held for a driver.
    Result { session: String, id: u64, report: Box<Report<DriverTaskId>> },
    /// A driver acknowledged a result.
    ResultAcked { session: String, id: u64 },
    /// A value shared among a session's tasks: the driver's number `id`, the server's `key`.
    Share { session: String, id: u64, key: u64, bytes: Bytes },
    /// A shared value is gone.
    Unshare { session: String, id: u64 },
    /// A session is over: it goes with its tasks and results.
    SessionEnded { session: String },
    /// Restored tasks are held for agents to re-attach, and the runs of this hold have used this
    /// many milliseconds of the grace so far; `None`: they were released.
    ReattachUsed { ms: Option<u64> },
}

/// What a data directory holds at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub sessions: Vec<(String, SessionRecord)>,
    /// With their attempts.
    pub tasks: Vec<(String, u64, TaskRecord)>,
    pub results: Vec<(String, Report<DriverTaskId>)>,
    /// Shared values: session, the driver's number, the record.
    pub shares: Vec<(String, u64, SharedRecord)>,
    /// Every kind, in the order of its number.
    pub kinds: Vec<TaskKind>,
    /// The agents connected when the server stopped: `(id, host)`.
    pub agents: Vec<(u64, String)>,
    /// Above every task's `seq` so far.
    pub next_seq: u64,
    /// How much of the re-attach grace the runs before used holding restored tasks, when the
    /// run that stopped held some: milliseconds.
    pub reattach_used_ms: Option<u64>,
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
        let db = match open_database(&path) {
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

    /// The stored server id, or `fresh` stored as it. A database of another layout is refused
    /// before anything is written to it.
    fn server_id(&self, fresh: ServerId) -> Result<ServerId, redb::Error> {
        // Read first: a database this server cannot use is left as it is.
        let stored = match self.db()?.begin_read()?.open_table(META) {
            Ok(meta) => {
                (meta.get("server_id")?.map(|v| v.value()), meta.get("format")?.map(|v| v.value()))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
            Err(e) => return Err(e.into()),
        };
        if let (Some(_), format) | (None, format @ Some(_)) = stored
            && format != Some(FORMAT)
        {
            let format = format.map_or("none".to_string(), |f| f.to_string());
            return Err(redb::Error::Corrupted(format!(
                "it was written by another version of blitzen-server (layout {format}; this one \
                 reads layout {FORMAT})"
            )));
        }
        let txn = self.db()?.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get("server_id")?.map(|v| v.value());
            let format = meta.get("format")?.map(|v| v.value());
            match (stored, format) {
                (Some(id), Some(FORMAT)) => ServerId::new(id),
                _ => {
                    meta.insert("format", FORMAT)?;
                    meta.insert("server_id", fresh.get())?;
                    fresh
                }
            }
        };
        // The other tables exist from now on, so a read finds them.
        txn.open_table(SESSIONS)?;
        txn.open_table(TASKS)?;
        txn.open_table(RESULTS)?;
        txn.open_table(SHARES)?;
        txn.open_table(KINDS)?;
        txn.open_table(AGENTS)?;
        txn.open_table(ATTEMPTS)?;
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
        match txn.open_table(SHARES) {
            Ok(table) => {
                for entry in table.iter()? {
                    let (key, record) = entry?;
                    let (session, id) = key.value();
                    let record = rmp_serde::from_slice(record.value())
                        .map_err(|e| corrupt("shared value", e))?;
                    loaded.shares.push((session.to_string(), id, record));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        for (i, entry) in txn.open_table(KINDS)?.iter()?.enumerate() {
            let (number, kind) = entry?;
            if number.value() as usize != i {
                return Err(redb::Error::Corrupted(format!("kind number {i} is missing")));
            }
            loaded.kinds.push(rmp_serde::from_slice(kind.value()).map_err(|e| corrupt("kind", e))?);
        }
        if let Some((_, id, _)) =
            loaded.tasks.iter().find(|(_, _, t)| t.kind as usize >= loaded.kinds.len())
        {
            return Err(redb::Error::Corrupted(format!("task {id} names a kind never stored")));
        }
        let attempts = txn.open_table(ATTEMPTS)?;
        for (session, id, record) in &mut loaded.tasks {
            if let Some(n) = attempts.get((session.as_str(), *id))? {
                record.attempts = n.value();
            }
        }
        for entry in txn.open_table(AGENTS)?.iter()? {
            let (id, host) = entry?;
            loaded.agents.push((id.value(), host.value().to_string()));
        }
        let meta = txn.open_table(META)?;
        loaded.next_seq = meta.get("next_seq")?.map_or(0, |v| v.value());
        loaded.reattach_used_ms = meta.get("reattach_used_ms")?.map(|v| v.value());
        Ok(loaded)
    }

    /// Commits `changes` in one transaction. After a failure the database is closed, and the
    /// next call opens it again first (redb keeps nothing of a transaction that failed).
    #[cfg(test)]
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        self.apply_batches(std::slice::from_ref(&changes))
    }

    /// [`Store::apply`] for batches in order, in one transaction.
    pub(crate) fn apply_batches<C: AsRef<[Change]>>(
        &mut self,
        batches: &[C],
    ) -> Result<(), StoreError> {
        if self.db.is_none() {
            let db = open_database(&self.path).map_err(|e| StoreError::Write(e.to_string()))?;
            self.db = Some(db);
        }
        let changes = batches.iter().flat_map(|batch| batch.as_ref());
        let result = self.apply_inner(changes).map_err(|e| StoreError::Write(e.to_string()));
        if result.is_err() {
            self.db = None;
        }
        result
    }

    fn apply_inner<'c>(
        &self,
        changes: impl Iterator<Item = &'c Change>,
    ) -> Result<(), redb::Error> {
        let encode = |value: &dyn erased::Encode| value.encode();
        let txn = self.db()?.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut tasks = txn.open_table(TASKS)?;
            let mut results = txn.open_table(RESULTS)?;
            let mut shares = txn.open_table(SHARES)?;
            let mut attempts = txn.open_table(ATTEMPTS)?;
            let mut kinds = txn.open_table(KINDS)?;
            let mut agents = txn.open_table(AGENTS)?;
            let mut next_seq = None;
            let mut reattach_used = None;
            for change in changes {
                match change {
                    Change::Session { session, record } => {
                        sessions.insert(session.as_str(), encode(record)?.as_slice())?;
                    }
                    Change::Tasks { session, tasks: taken } => {
                        for (id, record) in taken {
                            tasks.insert((session.as_str(), *id), encode(record)?.as_slice())?;
                            next_seq = next_seq.max(Some(record.seq + 1));
                        }
                    }
                    Change::TaskEnded { session, id, attempted } => {
                        tasks.remove((session.as_str(), *id))?;
                        if *attempted {
                            attempts.remove((session.as_str(), *id))?;
                        }
                    }
                    Change::Attempts { session, id, attempts: n } => {
                        attempts.insert((session.as_str(), *id), *n)?;
                    }
                    Change::Kind { number, kind } => {
                        kinds.insert(*number, encode(kind)?.as_slice())?;
                    }
                    Change::Agent { id, host } => {
                        agents.insert(*id, host.as_str())?;
                    }
                    Change::AgentGone { id } => {
                        agents.remove(*id)?;
                    }
                    Change::Result { session, id, report } => {
                        results.insert((session.as_str(), *id), encode(&**report)?.as_slice())?;
                    }
                    Change::ResultAcked { session, id } => {
                        results.remove((session.as_str(), *id))?;
                    }
                    Change::Share { session, id, key, bytes } => {
                        let record = SharedRecord { key: *key, bytes: bytes.clone() };
                        shares.insert((session.as_str(), *id), encode(&record)?.as_slice())?;
                    }
                    Change::Unshare { session, id } => {
                        shares.remove((session.as_str(), *id))?;
                    }
                    Change::SessionEnded { session } => {
                        sessions.remove(session.as_str())?;
                        let all = (session.as_str(), 0)..=(session.as_str(), u64::MAX);
                        tasks.retain_in(all.clone(), |_, _| false)?;
                        attempts.retain_in(all.clone(), |_, _| false)?;
                        results.retain_in(all.clone(), |_, _| false)?;
                        shares.retain_in(all, |_, _| false)?;
                    }
                    Change::ReattachUsed { ms } => reattach_used = Some(*ms),
                }
            }
            if next_seq.is_some() || reattach_used.is_some() {
                let mut meta = txn.open_table(META)?;
                if let Some(next) = next_seq {
                    let stored = meta.get("next_seq")?.map_or(0, |v| v.value());
                    meta.insert("next_seq", next.max(stored))?;
                }
                match reattach_used {
                    Some(Some(used)) => {
                        meta.insert("reattach_used_ms", used)?;
                    }
                    Some(None) => {
                        meta.remove("reattach_used_ms")?;
                    }
                    None => {}
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

#[cfg(test)]
mod tests;
