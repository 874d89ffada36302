//! Drivers told at once when no connected agent has one of their kinds with its signature,
//! though agents have a task of its name — the Python package's calls and agents with another
//! Python, cloudpickle or blitzen version, typically. A driver hears it when it declares the
//! kind (its first tasks of it, as it connects), and again each time an agent with a task of
//! that name joins while no agent has the driver's signature, each agent with its own.

use std::collections::HashSet;

use blitzen_protocol::cluster::{AgentSignature, Mismatch, ToDriver};
use tracing::warn;

use super::tasks::DriverKey;
use super::{Core, KindId};

impl Core {
    /// What the connected agents have of `kind`'s name, when none has its signature and some
    /// have its name.
    fn mismatch(&self, kind: KindId) -> Option<Mismatch> {
        let base = self.base(kind);
        if self.agents.values().any(|a| a.kinds.contains_key(&base)) {
            return None;
        }
        let wanted = self.kind(kind);
        let mut agents: Vec<AgentSignature> = (self.agents.values())
            .flat_map(|a| a.kinds.keys().map(move |&k| (a, k)))
            .filter(|&(_, k)| self.kind(k).name == wanted.name)
            .map(|(a, k)| AgentSignature {
                host: a.host.clone(),
                signature: self.kind(k).signature.clone(),
            })
            .collect();
        if agents.is_empty() {
            return None;
        }
        agents.sort_by(|a, b| (&a.host, &a.signature).cmp(&(&b.host, &b.signature)));
        Some(Mismatch { task: wanted.name.clone(), signature: wanted.signature.clone(), agents })
    }

    /// Tells the driver `driver_key` of each of `kinds` (just declared) that no agent has as it
    /// does.
    pub(super) fn tell_mismatches(&self, driver_key: DriverKey, kinds: &[KindId]) {
        let Some(tx) = self.drivers.get(&driver_key).and_then(|d| d.tx.as_ref()) else { return };
        let mut told = HashSet::new();
        for &kind in kinds {
            if !told.insert(self.base(kind)) {
                continue;
            }
            if let Some(mismatch) = self.mismatch(kind) {
                warn!(%driver_key, %mismatch, "a driver's task has no agent with its signature");
                let _ = tx.send(ToDriver::Mismatch(mismatch));
            }
        }
    }

    /// An agent with tasks of these names joined: every connected driver that declared a kind
    /// of one of them that still no agent has is told again, the new agent included.
    pub(super) fn tell_mismatches_after_join(&self, names: &[&str]) {
        for (&key, d) in self.drivers.iter().filter(|(_, d)| d.tx.is_some()) {
            let kinds: Vec<KindId> = (d.kinds.iter().copied())
                .filter(|&k| names.contains(&self.kind(k).name.as_str()))
                .collect();
            if !kinds.is_empty() {
                self.tell_mismatches(key, &kinds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{conn, core, driver, kind, submission, turn};
    use super::super::{Event, JoiningAgent};
    use crate::ServerConfig;
    use blitzen_protocol::cluster::{TaskKind, ToAgent, ToDriver};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn agent_with(
        c: &mut super::Core,
        n: u64,
        kinds: Vec<TaskKind>,
    ) -> mpsc::UnboundedReceiver<ToAgent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = JoiningAgent {
            host: format!("a{n}"),
            workers: 1,
            kinds,
            id: 0,
            replaces: 0,
            capacity: None,
            cache_size: 0,
            ends_in: None,
            allocation: String::new(),
        };
        c.on_event(Event::AgentJoined {
            conn: conn(n),
            agent,
            tx,
            close: CancellationToken::new(),
        });
        rx
    }

    fn mismatches(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            if let ToDriver::Mismatch(m) = msg {
                out.push(m.to_string());
            }
        }
        out
    }

    #[test]
    fn a_driver_hears_of_agents_with_other_signatures_when_it_declares_and_when_they_join() {
        let mut c = core(ServerConfig::default());
        let other = |n: u64| TaskKind {
            fingerprint: 100 + n,
            signature: format!("fn t() v{n}"),
            ..kind("t")
        };
        let _a10 = agent_with(&mut c, 10, vec![other(1)]);
        let mut d = driver(&mut c, 1);
        c.on_event(Event::Submit {
            conn: conn(1),
            kinds: vec![kind("t")],
            tasks: vec![submission(0, 0)],
        });
        turn(&mut c);
        assert_eq!(
            mismatches(&mut d),
            ["no connected agent has `t` as this driver does (fn t()): a10 has fn t() v1"]
        );
        // Another agent with yet another signature joins: told again, with both.
        let _a11 = agent_with(&mut c, 11, vec![other(2)]);
        turn(&mut c);
        assert_eq!(
            mismatches(&mut d),
            [
                "no connected agent has `t` as this driver does (fn t()): a10 has fn t() v1; a11 has fn t() v2"
            ]
        );
        // An agent with an unrelated task: nothing new. One with the driver's: nothing either.
        let _a12 = agent_with(&mut c, 12, vec![kind("other")]);
        let _a13 = agent_with(&mut c, 13, vec![kind("t")]);
        turn(&mut c);
        assert!(mismatches(&mut d).is_empty());
        let _a14 = agent_with(&mut c, 14, vec![other(3)]);
        turn(&mut c);
        assert!(mismatches(&mut d).is_empty(), "a13 has the driver's signature");
    }
}
