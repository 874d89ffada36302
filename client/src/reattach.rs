//! Re-attaching to a server that restarted on its data directory: the tasks it still has
//! finish here under their new keys; the others stop.

use std::collections::HashMap;

use blitzen_protocol::cluster::FromAgent;
use blitzen_protocol::ids::TaskKey;
use tracing::{info, warn};

use crate::Held;
use crate::connection::{Closed, Connection};

impl Connection<'_> {
    /// The restarted server named the tasks it still has, with their keys in its new run: they
    /// finish here; the others are dropped and their jobs cancelled (the server queued them
    /// again, or they ended).
    pub(crate) fn on_reattached(&mut self, kept: Vec<(u64, TaskKey)>) -> Result<(), Closed> {
        let Some((run, finished)) = self.reattaching.take() else {
            warn!("the server answered a re-attach this agent never asked for; ignored");
            return Ok(());
        };
        let keys: HashMap<u64, TaskKey> = kept.into_iter().collect();
        let number = self.number;
        let (mut kept, mut dropped) = (0, Vec::new());
        self.work.jobs.retain(|&id, held| {
            if held.connection == number {
                // Assigned by the new run, before its answer came.
                return true;
            }
            let Some(&key) = held.seq.and_then(|seq| keys.get(&seq)) else {
                dropped.push(id);
                return false;
            };
            *held = Held { key, seq: held.seq, connection: number };
            kept += 1;
            true
        });
        // The server no longer has them (ended, cancelled, or queued again for another agent):
        // they stop here rather than run on for nobody; their results are discarded.
        for id in &dropped {
            self.work.unstreamed.forget(id);
        }
        let dropped_jobs = dropped.len();
        if !dropped.is_empty() {
            let _ = self.work.pool.submitter().cancel(dropped);
        }
        let mut dropped = dropped_jobs;
        let mut again = Vec::new();
        for mut u in std::mem::take(&mut self.work.unsent) {
            if let Some(&key) = u.seq.and_then(|seq| keys.get(&seq)) {
                u.result.id = key;
                again.push(u.result.clone());
                self.unacked.insert(key, u);
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        self.work.run = run;
        info!(
            kept,
            dropped,
            "re-attached: the tasks the server still has finish here, the others are stopped"
        );
        self.send_results(FromAgent::Done, again)?;
        if finished.is_empty() { Ok(()) } else { self.on_results(finished) }
    }
}
