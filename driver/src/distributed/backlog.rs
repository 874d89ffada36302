//! [`Backlog`]: what the driver sent and the server has not taken yet, sent again after a
//! reconnect.

use blitzen_protocol::ids::DriverTaskId;

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
        while self.accepted < total && self.calls.pop_front().is_some() {
            self.accepted += 1;
        }
        self.accepted = self.accepted.max(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64) -> Call {
        Call::plain(DriverTaskId::new(id), "t", "fn t()")
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
