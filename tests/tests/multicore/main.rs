//! End-to-end tests of `MulticoreDispatcher` on real worker processes: `failures` (each way a
//! task can fail), `cancel`, `results`, `lifecycle`; `tasks`, the tasks they run and their
//! helpers.
//!
//! The workers are this test binary re-executed, so `main` calls `blitzen::worker_main()` before
//! handing over to the test harness.

mod cancel;
mod failures;
mod lifecycle;
mod results;
mod tasks;

/// What every file of this test uses.
mod prelude {
    pub(crate) use std::time::{Duration, Instant};

    pub(crate) use crate::tasks::*;
    pub(crate) use blitzen::{
        CommandSpec, DispatchError, ExitReason, Fetch, MulticoreDispatcher, RunOptions, Task,
        TaskError, command, echo,
    };
    pub(crate) use blitzen_tests::tally::{Tally, counted};
    pub(crate) use blitzen_tests::trial;
    pub(crate) use blitzen_tests::{Reports, check, fail, is_alive, kill, report};
    pub(crate) use libtest_mimic::{Arguments, Failed};
    pub(crate) use serde_bytes::ByteBuf;
}

use cancel::*;
use failures::*;
use lifecycle::*;
use prelude::*;
use results::*;

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    let args = Arguments::from_args();
    let trials = vec![
        trial!(panic_is_reported_and_the_worker_survives),
        trial!(returned_error_is_reported),
        trial!(abort_is_a_crash_with_sigabrt),
        trial!(exit_is_a_crash_with_its_code),
        trial!(a_crash_blames_only_the_task_that_crashed),
        trial!(a_task_runs_by_name_and_completions_come_in_finishing_order),
        trial!(segfault_is_a_crash_with_sigsegv),
        trial!(worker_killed_from_outside_is_replaced),
        trial!(a_killed_worker_ends_the_task_it_runs_however_many_it_holds),
        trial!(timeout_kills_the_worker_and_its_children),
        trial!(timeout_counts_from_the_start_not_the_queue),
        trial!(slow_task_does_not_hold_up_the_tasks_behind_it),
        trial!(finished_result_is_not_held_back_by_a_long_prefetched_task),
        trial!(results_come_in_the_order_asked),
        trial!(clear_false_keeps_results),
        trial!(join_returns_unfetched_results_in_submission_order),
        trial!(ten_thousand_tasks_each_return_exactly_once),
        trial!(large_arguments_and_results),
        trial!(blobs_round_trip_and_arrive_shared_with_the_result),
        trial!(retries_rerun_a_crashed_task_only_when_asked),
        trial!(megabytes_of_stdout_are_captured_and_truncated),
        trial!(unknown_task_and_signature_mismatch_are_clear_errors),
        trial!(builtin_command_runs_a_program),
        trial!(ids_of_another_dispatcher_are_refused),
        trial!(map_imap_and_imap_unordered),
        trial!(shutdown_leaves_no_worker_alive),
        trial!(cancel_ends_queued_and_running_tasks_and_kills_the_worker_with_its_children),
        trial!(cancel_leaves_finished_tasks_alone_and_refuses_foreign_ids),
        trial!(cancel_all_ends_every_task_once_even_those_a_worker_prefetched),
        trial!(drop_stops_the_workers),
        trial!(killed_dispatcher_process_leaves_no_orphans),
        trial!(forgetting_worker_main_is_a_clear_error),
        trial!(a_start_task_sets_up_each_worker_once),
        trial!(priorities_order_the_queue_and_a_waiting_low_task_rises),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
