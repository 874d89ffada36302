//! [`Backlog`]: what the driver sent and the server has not taken yet, sent again after a
//! reconnect; and the acknowledgements held back meanwhile.
//!
//! A task sent with inputs the server is to fill waits there on other tasks of the session.
//! The server meets such a wait with a result it still holds, and it forgets a result once
//! acknowledged: so the result of a task that a call not yet taken by the server waits on is
//! acknowledged only once the server has taken that call.

use std::collections::HashMap;

use blitzen_protocol::ids::{DriverTaskId, IdHash};

use crate::call::Call;

/// Submissions sent and not yet accepted by the server, in order: after a reconnect the server
/// says how many of the session's tasks it holds, and the rest are sent again.
#[derive(Default)]
pub(super) struct Backlog {
    /// Tasks the server has accepted, over every session of this dispatcher.
    pub(super) accepted: u64,
    /// Tasks accepted in sessions before the current one (a server that forgot a session with
    /// nothing left in it starts a new one, counting from 0).
    base: u64,
    /// Tasks of the current session another process submitted (this one attached to it).
    foreign: u64,
    /// Calls sent after the first `accepted`, oldest first.
    pub(super) calls: std::collections::VecDeque<Call>,
    /// Tasks that calls of `calls` wait on, each with the number of such waits.
    waited_on: HashMap<DriverTaskId, u32, IdHash>,
    /// Results received whose acknowledgement waits until no call of `calls` waits on them.
    withheld: Vec<DriverTaskId>,
    /// The values shared and not unshared, by number: sent again to a server that lacks them.
    pub(super) shares: HashMap<u64, bytes::Bytes>,
    /// Tasks asked to be cancelled whose results have not arrived: asked again on every new
    /// connection, since the server may not have heard (the cancel is idempotent).
    pub(super) cancels: std::collections::HashSet<DriverTaskId>,
}

impl Backlog {
    /// A connection opened the session: a new one counts from what was accepted so far.
    pub(super) fn session(&mut self, resumed: bool, accepted: u64) {
        if !resumed {
            self.base = self.accepted;
            self.foreign = 0;
        }
        self.accepted_in_session(accepted);
    }

    /// This dispatcher attached to a session in which `accepted` tasks came from elsewhere.
    pub(super) fn attached(&mut self, accepted: u64) {
        self.foreign = accepted;
    }

    /// The server holds `accepted` of the session's tasks: those are off the backlog.
    pub(super) fn accepted_in_session(&mut self, accepted: u64) {
        let total = self.base + accepted.saturating_sub(self.foreign);
        while self.accepted < total
            && let Some(call) = self.calls.pop_front()
        {
            self.accepted += 1;
            if let Some(inputs) = &call.inputs {
                for (on, _) in inputs.waits() {
                    if let Some(n) = self.waited_on.get_mut(&on) {
                        *n -= 1;
                        if *n == 0 {
                            self.waited_on.remove(&on);
                        }
                    }
                }
            }
        }
        self.accepted = self.accepted.max(total);
    }

    /// `call` was sent.
    pub(super) fn sent(&mut self, call: Call) {
        if let Some(inputs) = &call.inputs {
            for (on, _) in inputs.waits() {
                *self.waited_on.entry(on).or_default() += 1;
            }
        }
        self.calls.push_back(call);
    }

    /// Of the results `ids` just received, those to acknowledge now; the others are held back
    /// until [`acknowledgeable`](Self::acknowledgeable) gives them.
    pub(super) fn acknowledge_now(&mut self, ids: Vec<DriverTaskId>) -> Vec<DriverTaskId> {
        if self.waited_on.is_empty() {
            return ids;
        }
        let (now, later) = ids.into_iter().partition(|id| !self.waited_on.contains_key(id));
        self.withheld.extend(later);
        now
    }

    /// Results held back that no call in the backlog waits on any more.
    pub(super) fn acknowledgeable(&mut self) -> Vec<DriverTaskId> {
        if self.withheld.is_empty() {
            return Vec::new();
        }
        let (now, later) = (std::mem::take(&mut self.withheld).into_iter())
            .partition(|id| !self.waited_on.contains_key(id));
        self.withheld = later;
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64) -> Call {
        Call::plain(DriverTaskId::new(id), "t", "fn t()")
    }

    #[test]
    fn a_result_a_call_not_taken_yet_waits_on_is_acknowledged_once_the_call_is_taken() {
        use blitzen_protocol::inputs::{Framing, InputPart, Inputs};
        let mut b = Backlog::default();
        b.session(false, 0);
        let mut waiting = call(2);
        let on = DriverTaskId::new(1);
        let parts = vec![InputPart::Result(on)];
        waiting.inputs = Some(Box::new(Inputs { framing: Framing::Single, parts, after: vec![] }));
        b.sent(call(1));
        b.sent(waiting);
        let (one, three) = (DriverTaskId::new(1), DriverTaskId::new(3));
        assert_eq!(b.acknowledge_now(vec![one, three]), [three], "1 is held back");
        assert!(b.acknowledgeable().is_empty());
        b.accepted_in_session(1);
        assert!(b.acknowledgeable().is_empty(), "the waiting call is not taken yet");
        b.accepted_in_session(2);
        assert_eq!(b.acknowledgeable(), [one]);
        assert_eq!(b.acknowledge_now(vec![one]), [one], "nothing waits on it now");
    }

    #[test]
    fn the_backlog_keeps_what_the_server_has_not_taken_across_sessions() {
        let mut b = Backlog::default();
        b.calls.extend((1..=5).map(call));
        b.session(false, 0);
        b.accepted_in_session(3);
        assert_eq!(b.calls.iter().map(|c| c.id.get()).collect::<Vec<_>>(), [4, 5]);
        // Reconnected to the same session, which had taken one more meanwhile.
        b.session(true, 4);
        assert_eq!((b.accepted, b.calls.len()), (4, 1));
        // The server forgot the session (nothing was left in it): a new one counts from 0.
        b.calls.extend((6..=7).map(call));
        b.session(false, 0);
        assert_eq!(b.calls.iter().map(|c| c.id.get()).collect::<Vec<_>>(), [5, 6, 7]);
        b.accepted_in_session(3);
        assert_eq!((b.accepted, b.calls.len()), (7, 0));
    }
}
