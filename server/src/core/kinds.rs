//! The kinds of task the server has met: each (name, signature, request, label, streaming,
//! priority) interned once as a [`KindId`], with its *base* — the name and signature alone, what
//! agents announce and run — and saved to the data directory when it has one.

use blitzen_protocol::Request;
use blitzen_protocol::cluster::TaskKind;

use super::Core;
use crate::store::Change;

/// What tells kinds apart: name, fingerprint, request, label, whether streamed, priority.
pub(super) type KindKey = (String, u64, Option<Request>, Option<String>, bool, i32);

/// A [`TaskKind`] interned by the server: its index in `Core::kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KindId(pub(super) u32);

impl KindId {
    pub(super) fn index(self) -> usize {
        self.0 as usize
    }
}

impl Core {
    /// The server's id of a kind, interning it on first sight.
    pub(super) fn intern(&mut self, kind: TaskKind) -> KindId {
        let key = (
            kind.name.clone(),
            kind.fingerprint,
            kind.request.clone(),
            kind.label.clone(),
            kind.stream,
            kind.priority,
        );
        if let Some(&id) = self.kind_ids.get(&key) {
            return id;
        }
        let plain = kind.request.is_none() && kind.label.is_none() && !kind.stream;
        let base = (!plain || kind.priority != 0).then(|| {
            let base =
                TaskKind { request: None, label: None, stream: false, priority: 0, ..kind.clone() };
            self.intern(base)
        });
        let id = KindId(self.kinds.len() as u32);
        self.bases.push(base.unwrap_or(id));
        if let Some(durable) = &mut self.durable
            && id.0 >= durable.kinds_saved
        {
            durable.kinds_saved = id.0 + 1;
            durable.changes.push(Change::Kind { number: id.0, kind: Box::new(kind.clone()) });
        }
        self.kinds.push(kind);
        self.kind_ids.insert(key, id);
        id
    }

    /// The kind an id stands for.
    pub(super) fn kind(&self, id: KindId) -> &TaskKind {
        &self.kinds[id.index()]
    }

    /// The kind without its request, label, streaming and priority: what an agent announces.
    pub(super) fn base(&self, id: KindId) -> KindId {
        self.bases[id.index()]
    }

    /// What a task of this kind holds while it runs.
    pub(super) fn request(&self, id: KindId) -> &Request {
        static PLAIN: Request = Request::PLAIN;
        self.kinds[id.index()].request.as_ref().unwrap_or(&PLAIN)
    }
}
