//! Shared values: a large input many tasks take, stored once in the server and sent to each
//! agent once.
//!
//! A driver sends the value once ([`FromDriver::Share`], in pieces) under its own number; the
//! server keeps it under a key of its own, the same across its restarts with a data directory,
//! where it is saved with the session. A task that takes it names it among its inputs, and
//! keeps its inputs part by part (its `args` empty): the value is never spliced into any task's
//! arguments. Before an agent gets the first task that takes a value, the agent gets the value
//! ([`ToAgent::Share`]), which it keeps in its cache and hands to its workers as a file they
//! map; the server keeps the books of each agent's cache ([`AgentCache`]): within its size,
//! least recently used first out, never a value that a task the agent holds takes.
//!
//! Locality: a task that takes a value of [`LOCAL_BYTES`] or more goes to an agent that lacks
//! it only when no agent that has it can take the task at that moment (it has free credit and
//! could run the task's kind), so a burst of such tasks keeps to the agents that hold the value
//! while they have room; and it is held back so for [`LOCAL_WAIT`] at most, after which the next
//! agent with room takes it (and receives the value) whatever the others hold.
//!
//! A value goes when its driver no longer shares it ([`FromDriver::Unshare`], the handle
//! dropped) and no task that takes it is held: agents are told to forget it.
//!
//! [`FromDriver::Share`]: blitzen_protocol::cluster::FromDriver::Share
//! [`FromDriver::Unshare`]: blitzen_protocol::cluster::FromDriver::Unshare
//! [`ToAgent::Share`]: blitzen_protocol::cluster::ToAgent::Share

use std::collections::HashMap;

use blitzen_protocol::cluster::{SHARE_PIECE, SharePiece, ToAgent};
use blitzen_protocol::ids::{ConnId, IdHash, TaskKey};
use blitzen_protocol::inputs::{InputPart, Inputs};
use bytes::{Bytes, BytesMut};
use tracing::{debug, info, warn};

use super::Core;
use super::tasks::DriverKey;
use crate::store::Change;

/// The most bytes one shared value may have.
const MAX_SHARED: u64 = 64 << 30;

/// Shared values at least this large make a task prefer the agents that hold them.
pub(super) const LOCAL_BYTES: u64 = 1 << 20;

/// Longest a task is held back for an agent that has its shared values.
pub(super) const LOCAL_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// An agent's cache when it does not say its size.
pub(super) const DEFAULT_CACHE: u64 = 1 << 30;

/// Every shared value held, and the tasks that take them.
#[derive(Debug, Default)]
pub(super) struct Shares {
    /// By the server's key.
    values: HashMap<u64, Value, IdHash>,
    /// Keys by session and the driver's number.
    keys: HashMap<(DriverKey, u64), u64, IdHash>,
    /// Values still arriving, by session and the driver's number.
    arriving: HashMap<(DriverKey, u64), BytesMut, IdHash>,
    /// The next key: above every key used, across restarts.
    next_key: u64,
    /// The arguments of tasks that take shared values, part by part (their `args` are empty),
    /// once they wait for nothing else.
    pub inputs: HashMap<TaskKey, Box<Inputs>, IdHash>,
    /// The keys each held task takes, from its submission to its end.
    takes: HashMap<TaskKey, Vec<u64>, IdHash>,
    /// Bytes of shared values sent to agents so far.
    pub sent_bytes: u64,
    /// Tasks held back for an agent that has their values: since when.
    held_back: HashMap<TaskKey, std::time::Instant, IdHash>,
}

#[derive(Debug)]
struct Value {
    driver: DriverKey,
    /// The driver's number for it.
    id: u64,
    bytes: Bytes,
    /// Whether its driver still shares it.
    shared: bool,
    /// Held tasks that take it.
    uses: u32,
}

/// The server's books of one agent's cache of shared values.
#[derive(Debug)]
pub(super) struct AgentCache {
    /// Its size, in bytes.
    pub size: u64,
    /// Bytes held.
    pub used: u64,
    /// Each value held: its length, when it was last taken (a counter), and how many tasks the
    /// agent holds take it.
    held: HashMap<u64, Cached, IdHash>,
    /// Counts uses, for the least recently used.
    clock: u64,
    /// Values to send before the next assignments, in order.
    pub outgoing: Vec<u64>,
    /// Values it may forget, to say before those.
    pub forget: Vec<u64>,
}

#[derive(Debug)]
struct Cached {
    len: u64,
    last: u64,
    pins: u32,
}

impl AgentCache {
    /// An empty cache of `size` bytes (0: the default).
    pub(super) fn new(size: u64) -> Self {
        let size = if size == 0 { DEFAULT_CACHE } else { size };
        Self {
            size,
            used: 0,
            held: HashMap::default(),
            clock: 0,
            outgoing: Vec::new(),
            forget: Vec::new(),
        }
    }

    /// Whether it holds `key`.
    fn holds(&self, key: u64) -> bool {
        self.held.contains_key(&key)
    }

    /// A task it holds no longer takes `key`.
    fn unpin(&mut self, key: u64) {
        if let Some(c) = self.held.get_mut(&key) {
            c.pins = c.pins.saturating_sub(1);
        }
    }

    /// Drops `key` from the books (the value is gone).
    fn drop_value(&mut self, key: u64) -> bool {
        match self.held.remove(&key) {
            Some(c) => {
                self.used -= c.len;
                true
            }
            None => false,
        }
    }
}

impl Shares {
    /// Key and length of the value `id` of `driver`, if held.
    fn key_of(&self, driver: DriverKey, id: u64) -> Option<u64> {
        self.keys.get(&(driver, id)).copied()
    }

    /// Forgets the tasks for which `keep` is false (gone without an end).
    pub(super) fn retain_tasks(&mut self, keep: impl Fn(TaskKey) -> bool) {
        self.inputs.retain(|&k, _| keep(k));
        self.held_back.retain(|&k, _| keep(k));
        let gone: Vec<TaskKey> = self.takes.keys().copied().filter(|&k| !keep(k)).collect();
        for task in gone {
            for k in self.takes.remove(&task).unwrap_or_default() {
                if let Some(v) = self.values.get_mut(&k) {
                    v.uses = v.uses.saturating_sub(1);
                }
            }
        }
    }

    /// Values held, and their bytes in all.
    pub(super) fn held(&self) -> (u64, u64) {
        let bytes = self.values.values().map(|v| v.bytes.len() as u64).sum();
        (self.values.len() as u64, bytes)
    }

    /// The driver's numbers of the values of `driver`.
    pub(super) fn of(&self, driver: DriverKey) -> Vec<u64> {
        let mut ids: Vec<u64> =
            self.values.values().filter(|v| v.driver == driver).map(|v| v.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Restores value `id` of `driver` under `key`, as the data directory held it.
    pub(super) fn restore(&mut self, driver: DriverKey, id: u64, key: u64, bytes: Bytes) {
        self.next_key = self.next_key.max(key + 1);
        self.keys.insert((driver, id), key);
        let value = Value { driver, id, bytes, shared: true, uses: 0 };
        self.values.insert(key, value);
    }

    /// The bytes of the value `key`.
    fn bytes(&self, key: u64) -> Option<&Bytes> {
        self.values.get(&key).map(|v| &v.bytes)
    }
}

impl Core {
    /// A piece of a value `driver` shares came in; the whole value is kept once all of it has.
    pub(super) fn share_piece(&mut self, driver: DriverKey, piece: SharePiece) {
        let at = (driver, piece.id);
        if piece.total > MAX_SHARED || self.shares.keys.contains_key(&at) {
            warn!(%driver, id = piece.id, total = piece.total, "a shared value too large, or shared twice; ignored");
            return;
        }
        let arriving = self.shares.arriving.entry(at).or_insert_with(|| {
            // Reserved as it comes beyond the first pieces: a length is only what a peer says.
            let total = usize::try_from(piece.total).unwrap_or(usize::MAX);
            BytesMut::with_capacity(total.min(4 * SHARE_PIECE))
        });
        if arriving.len() as u64 != piece.offset
            || piece.offset + piece.bytes.len() as u64 > piece.total
        {
            warn!(%driver, id = piece.id, "a piece of a shared value out of order; the value is dropped");
            self.shares.arriving.remove(&at);
            return;
        }
        arriving.extend_from_slice(&piece.bytes);
        if (arriving.len() as u64) < piece.total {
            return;
        }
        let Some(bytes) = self.shares.arriving.remove(&at).map(BytesMut::freeze) else { return };
        let key = self.shares.next_key.max(1);
        self.shares.next_key = key + 1;
        debug!(%driver, id = piece.id, key, bytes = bytes.len(), "shared value held");
        if let Some(session) = self.durable_session(driver) {
            let bytes = bytes.clone();
            self.record(Change::Share { session, id: piece.id, key, bytes });
        }
        self.shares.keys.insert(at, key);
        let value = Value { driver, id: piece.id, bytes, shared: true, uses: 0 };
        self.shares.values.insert(key, value);
    }

    /// `driver` no longer shares the values `ids`: each goes once no held task takes it.
    pub(super) fn unshare(&mut self, driver: DriverKey, ids: Vec<u64>) {
        for id in ids {
            self.shares.arriving.remove(&(driver, id));
            let Some(key) = self.shares.key_of(driver, id) else { continue };
            let Some(value) = self.shares.values.get_mut(&key) else { continue };
            value.shared = false;
            if value.uses == 0 {
                self.free_value(key);
            }
        }
    }

    /// Forgets value `key`, here, in the data directory and in every agent's cache.
    fn free_value(&mut self, key: u64) {
        let Some(value) = self.shares.values.remove(&key) else { return };
        self.shares.keys.remove(&(value.driver, value.id));
        debug!(driver = %value.driver, id = value.id, key, "shared value forgotten");
        if let Some(session) = self.durable_session(value.driver) {
            self.record(Change::Unshare { session, id: value.id });
        }
        for agent in self.agents.values_mut() {
            if agent.cache.drop_value(key) {
                agent.cache.outgoing.retain(|&k| k != key);
                agent.cache.forget.push(key);
            }
        }
    }

    /// Forgets every value of `driver` (its session ended).
    pub(super) fn forget_shares(&mut self, driver: DriverKey) {
        let keys: Vec<u64> = (self.shares.values.iter())
            .filter(|(_, v)| v.driver == driver)
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.free_value(key);
        }
        self.shares.arriving.retain(|(d, _), _| *d != driver);
    }

    /// Why a task of `driver` with `inputs` cannot take its shared values, if it cannot: one the
    /// server does not hold, one larger than the cache of every connected agent, or a file.
    pub(super) fn cannot_share(&self, driver: DriverKey, inputs: &Inputs) -> Option<String> {
        // Files are the agents' own, for their workers: never a driver's to name.
        if inputs.parts.iter().any(|p| matches!(p, InputPart::File(_))) {
            return Some("its arguments name a file, which a driver cannot send".to_string());
        }
        let largest = self.agents.values().map(|a| a.cache.size).max();
        inputs.shared().find_map(|id| {
            let Some(bytes) = self.shares.key_of(driver, id).and_then(|k| self.shares.bytes(k))
            else {
                return Some(format!(
                    "it takes shared value {id}, which the server does not hold (never shared, \
                     or unshared)"
                ));
            };
            let len = bytes.len() as u64;
            largest.filter(|&cache| len > cache).map(|cache| {
                format!(
                    "it takes shared value {id} of {len} bytes, more than the cache of any \
                     connected agent holds (the largest holds {cache} bytes: see the agents' \
                     --cache-size)"
                )
            })
        })
    }

    /// Task `key` of `driver` takes the shared values among `inputs`, by the driver's numbers:
    /// they are named by the server's keys from now on. `Err` with the number of one not held.
    pub(super) fn take_shared(
        &mut self,
        driver: DriverKey,
        key: TaskKey,
        inputs: &mut Inputs,
    ) -> Result<(), u64> {
        let mut keys = Vec::new();
        for part in &mut inputs.parts {
            if let InputPart::Shared(id) = part {
                let Some(k) = self.shares.key_of(driver, *id) else { return Err(*id) };
                *part = InputPart::Shared(k);
                keys.push(k);
            }
        }
        self.hold_shared(key, keys);
        Ok(())
    }

    /// Task `key` takes the values `keys` (server keys), until it ends.
    pub(super) fn hold_shared(&mut self, key: TaskKey, keys: Vec<u64>) {
        for k in &keys {
            if let Some(v) = self.shares.values.get_mut(k) {
                v.uses += 1;
            }
        }
        self.shares.takes.insert(key, keys);
    }

    /// Task `key` ended (on agent `agent`, if one held it): the values it took are free of it.
    pub(super) fn shared_task_ended(&mut self, key: TaskKey, agent: Option<ConnId>) {
        if self.shares.takes.is_empty() {
            return;
        }
        self.shares.inputs.remove(&key);
        self.shares.held_back.remove(&key);
        let Some(keys) = self.shares.takes.remove(&key) else { return };
        for k in keys {
            if let Some(a) = agent.and_then(|a| self.agents.get_mut(&a)) {
                a.cache.unpin(k);
            }
            let Some(v) = self.shares.values.get_mut(&k) else { continue };
            v.uses = v.uses.saturating_sub(1);
            if v.uses == 0 && !v.shared {
                self.free_value(k);
            }
        }
    }

    /// Task `key`, assigned to agent `conn`, takes shared values: each the agent's cache lacks
    /// is sent first (room made by forgetting the least recently used that no task there
    /// takes), and each is kept there while the task is held. Its inputs, for the assignment.
    pub(super) fn shared_for(&mut self, conn: ConnId, key: TaskKey) -> Option<Box<Inputs>> {
        let inputs = self.shares.inputs.get(&key)?.clone();
        if !self.shares.held_back.is_empty() {
            self.shares.held_back.remove(&key);
        }
        let shares = &mut self.shares;
        let agent = self.agents.get_mut(&conn)?;
        let cache = &mut agent.cache;
        for k in inputs.shared() {
            cache.clock += 1;
            let clock = cache.clock;
            if let Some(c) = cache.held.get_mut(&k) {
                c.pins += 1;
                c.last = clock;
                continue;
            }
            let Some(bytes) = shares.bytes(k) else { continue };
            let len = bytes.len() as u64;
            while cache.used + len > cache.size {
                let oldest = (cache.held.iter())
                    .filter(|(_, c)| c.pins == 0)
                    .min_by_key(|(_, c)| c.last)
                    .map(|(&k, _)| k);
                let Some(old) = oldest else { break };
                cache.drop_value(old);
                cache.forget.push(old);
            }
            if cache.used + len > cache.size {
                info!(host = %agent.host, key = k, bytes = len, size = cache.size, "an agent's cache is full of values its tasks take; sent beyond its size");
            }
            cache.used += len;
            cache.held.insert(k, Cached { len, last: clock, pins: 1 });
            cache.outgoing.push(k);
            shares.sent_bytes += len;
        }
        Some(inputs)
    }

    /// Whether task `key`, about to go to agent `conn`, should go to another: it takes a large
    /// value `conn` lacks, and an agent that has all such values can take it now.
    pub(super) fn better_elsewhere(&mut self, conn: ConnId, key: TaskKey) -> bool {
        let since = self.shares.held_back.get(&key).copied();
        if since.is_some_and(|at| at.elapsed() >= LOCAL_WAIT) {
            return false;
        }
        let better = self.holder_has_room(conn, key);
        if better && since.is_none() {
            self.shares.held_back.insert(key, std::time::Instant::now());
        }
        better
    }

    fn holder_has_room(&self, conn: ConnId, key: TaskKey) -> bool {
        let (Some(inputs), Some(agent), Some(task)) =
            (self.shares.inputs.get(&key), self.agents.get(&conn), self.tasks.get(key))
        else {
            return false;
        };
        let large = |k: &u64| self.shares.bytes(*k).is_some_and(|b| b.len() as u64 >= LOCAL_BYTES);
        let lacking: Vec<u64> =
            inputs.shared().filter(|k| large(k) && !agent.cache.holds(*k)).collect();
        if lacking.is_empty() {
            return false;
        }
        self.agents.iter().any(|(&other, a)| {
            other != conn
                && a.running.len() < a.capacity()
                && lacking.iter().all(|k| a.cache.holds(*k))
                && self.could_run(a, task.kind)
        })
    }

    /// Puts task `key`, just taken from its queue, back at the front of it.
    pub(super) fn requeue_front(&mut self, key: TaskKey) {
        let Some(task) = self.tasks.get(key) else { return };
        let (driver, kind) = (task.driver, task.kind);
        if let Some(d) = self.drivers.get_mut(&driver) {
            d.queues.entry(kind).or_default().push_front(key);
        }
    }

    /// The messages that send agent `conn` its pending values and forgets, in order.
    pub(super) fn share_messages(&mut self, conn: ConnId) -> Vec<ToAgent> {
        let Some(agent) = self.agents.get_mut(&conn) else { return Vec::new() };
        let mut out = Vec::new();
        if !agent.cache.forget.is_empty() {
            out.push(ToAgent::Unshare(std::mem::take(&mut agent.cache.forget)));
        }
        for k in std::mem::take(&mut agent.cache.outgoing) {
            if let Some(bytes) = self.shares.bytes(k) {
                out.extend(SharePiece::split(k, bytes).into_iter().map(ToAgent::Share));
            }
        }
        out
    }
}
