//! The autoscaler's decisions, apart from any scheduler: how many agents to ask for, and when
//! failures make it wait ([`backoff`]) or stop asking ([`Failures`]).

use std::time::Duration;

/// Failed submissions in a row after which the autoscaler stops asking.
pub(crate) const PAUSE_AFTER_SUBMISSIONS: u32 = 5;
/// Allocations in a row that ended without their agent ever connecting, after which it stops.
pub(crate) const PAUSE_AFTER_ALLOCATIONS: u32 = 3;
/// The longest wait between failed submissions.
const LONGEST_BACKOFF: Duration = Duration::from_secs(600);

/// What the autoscaler counts at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Count {
    /// Ready tasks an agent of its shape could run, that no agent holds.
    pub ready: u64,
    /// Workers of each agent it asks for.
    pub agent_workers: u32,
    /// Its allocations whose agent has not connected yet (pending, or starting): each takes
    /// `agent_workers` of the ready tasks once it does.
    pub coming: u32,
    /// Its allocations the scheduler still has, whatever their state.
    pub held: u32,
    /// The most it may hold.
    pub max_agents: u32,
}

/// How many agents to ask for now, and why, in words.
pub(crate) fn agents_to_ask(c: Count) -> (u32, String) {
    if c.ready == 0 {
        return (0, "no ready task waits for an agent".into());
    }
    let needed = c.ready.div_ceil(u64::from(c.agent_workers.max(1)));
    let needed = u32::try_from(needed).unwrap_or(u32::MAX);
    let short = needed.saturating_sub(c.coming);
    let room = c.max_agents.saturating_sub(c.held);
    let ask = short.min(room);
    let why = format!(
        "{} ready tasks need {needed} agents of {} workers; {} coming, {} of at most {} held",
        c.ready, c.agent_workers, c.coming, c.held, c.max_agents
    );
    match ask {
        0 if short == 0 => (0, format!("{why}: the agents coming take them")),
        0 => (0, format!("{why}: at the maximum")),
        n => (n, format!("{why}: asking for {n}")),
    }
}

/// How long to wait after `failures` failed submissions in a row: one tick after the first,
/// doubling after each next one, at most 10 minutes.
pub(crate) fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doubled = interval.saturating_mul(1 << (failures - 1).min(16));
    doubled.min(LONGEST_BACKOFF)
}

/// Failures in a row, and the pause they lead to.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Failures {
    /// Submissions refused by the scheduler in a row.
    pub submissions: u32,
    /// Allocations that ended before their agent connected, in a row.
    pub allocations: u32,
    /// Why the autoscaler asks for nothing more, once it has stopped.
    pub paused: Option<String>,
}

impl Failures {
    /// A submission was refused, with `error`.
    pub fn submission_failed(&mut self, error: &str) {
        self.submissions += 1;
        if self.submissions >= PAUSE_AFTER_SUBMISSIONS && self.paused.is_none() {
            self.paused = Some(format!(
                "{} submissions in a row failed; the last: {error}",
                self.submissions
            ));
        }
    }

    /// A submission went through.
    pub fn submitted(&mut self) {
        self.submissions = 0;
    }

    /// An allocation ended before its agent connected.
    pub fn allocation_failed(&mut self, id: &str) {
        self.allocations += 1;
        if self.allocations >= PAUSE_AFTER_ALLOCATIONS && self.paused.is_none() {
            self.paused = Some(format!(
                "{} allocations in a row ended before their agent connected; the last: {id} \
                 (see its output file)",
                self.allocations
            ));
        }
    }

    /// An allocation's agent connected.
    pub fn allocation_started(&mut self) {
        self.allocations = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(ready: u64, coming: u32, held: u32) -> Count {
        Count { ready, agent_workers: 4, coming, held, max_agents: 10 }
    }

    #[test]
    fn a_burst_asks_once_up_to_the_maximum() {
        assert_eq!(agents_to_ask(count(1000, 0, 0)).0, 10);
        // The next tick, the ten are pending: nothing more.
        let (n, why) = agents_to_ask(count(1000, 10, 10));
        assert_eq!(n, 0, "{why}");
        assert!(why.contains("at the maximum") || why.contains("coming"), "{why}");
    }

    #[test]
    fn pending_agents_count_against_what_is_ready() {
        // 10 tasks need 3 agents of 4 workers; 2 are coming.
        assert_eq!(agents_to_ask(count(10, 2, 2)).0, 1);
        assert_eq!(agents_to_ask(count(8, 2, 5)).0, 0);
        // Running agents that hold their share leave the rest to new ones.
        assert_eq!(agents_to_ask(count(8, 0, 5)).0, 2);
        let (n, why) = agents_to_ask(count(0, 0, 0));
        assert_eq!(n, 0);
        assert!(why.contains("no ready task"), "{why}");
    }

    #[test]
    fn backoff_doubles_from_one_tick_to_ten_minutes() {
        let tick = Duration::from_secs(5);
        let waits: Vec<u64> = (0..5).map(|f| backoff(tick, f).as_secs()).collect();
        assert_eq!(waits, [0, 5, 10, 20, 40]);
        assert_eq!(backoff(tick, 40), LONGEST_BACKOFF);
    }

    #[test]
    fn repeated_failures_pause_with_their_reason() {
        let mut f = Failures::default();
        for _ in 0..PAUSE_AFTER_SUBMISSIONS - 1 {
            f.submission_failed("invalid partition");
        }
        assert!(f.paused.is_none());
        f.submitted();
        assert_eq!(f.submissions, 0);
        for _ in 0..PAUSE_AFTER_SUBMISSIONS {
            f.submission_failed("sbatch: error: invalid partition name specified");
        }
        let paused = f.paused.clone().expect("paused");
        assert!(paused.contains("5 submissions") && paused.contains("partition"), "{paused}");

        let mut f = Failures::default();
        f.allocation_failed("17");
        f.allocation_started();
        for id in ["18", "19", "20"] {
            f.allocation_failed(id);
        }
        assert!(f.paused.as_deref().is_some_and(|p| p.contains("20")), "{:?}", f.paused);
    }
}
