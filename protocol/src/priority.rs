//! Priorities: which waiting task starts first, and the bound on how long a low one waits.
//!
//! A task's priority is an `i32`: 0 unless said, higher first. Waiting tasks are kept in
//! *lanes* of one priority each (in a pool, one per priority; on the server, one per driver and
//! kind of task, the kind carrying the priority), first in, first out. The next task comes from
//! the lane of the highest *effective* priority ([`effective`]): its priority plus one for each
//! [`AGE_STEP`] the lane has waited since it last started a task (or since it filled), but never
//! above the highest priority waiting; among equal effective priorities the oldest task goes
//! first. So however many tasks of priority `P` keep coming, a lane of priority `p` starts one
//! task at least every `(P − p) × AGE_STEP`: no task waits for ever. Tasks that all have one
//! priority start in submission order, as if there were none.
//!
//! On a cluster the server orders each driver's tasks so (drivers still take turns), and an
//! agent runs what it is sent in the order sent: a priority travels in its task's kind, never
//! with the task.

use std::time::Duration;

/// How long a lane waits for each level its effective priority rises.
pub const AGE_STEP: Duration = Duration::from_secs(1);

/// The effective priority of a lane of `priority` that has waited `waited` since it last
/// started a task, when `highest` is the highest priority waiting.
pub fn effective(priority: i32, waited: Duration, highest: i32) -> i32 {
    let aged = waited.as_millis() / AGE_STEP.as_millis();
    let raised = i64::from(priority).saturating_add(i64::try_from(aged).unwrap_or(i64::MAX));
    raised.min(i64::from(highest.max(priority))) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_rises_one_level_a_step_up_to_the_highest_waiting() {
        let s = |secs: f64| Duration::from_secs_f64(secs);
        assert_eq!(effective(0, s(0.0), 10), 0);
        assert_eq!(effective(0, s(0.99), 10), 0);
        assert_eq!(effective(0, s(3.5), 10), 3);
        assert_eq!(effective(0, s(60.0), 10), 10, "never above the highest waiting");
        assert_eq!(effective(10, s(60.0), 10), 10);
        assert_eq!(effective(-5, s(2.0), 0), -3, "negative priorities rise the same way");
        assert_eq!(effective(i32::MIN, Duration::MAX, i32::MAX), i32::MAX);
    }
}
