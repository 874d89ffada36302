//! Results: order, keeping, joining, many, large, streamed, by name.

use crate::prelude::*;

pub(crate) fn results_come_in_the_order_asked() -> Result<(), Failed> {
    let d = dispatcher(4)?;
    let ids: Vec<_> = [400, 300, 200, 100, 0].iter().map(|&ms| d.run(nap_ms, ms)).collect();
    let got: Vec<u64> =
        d.get_results(&ids).map_err(fail)?.into_iter().map(|r| r.unwrap_or(0)).collect();
    check(got == [400, 300, 200, 100, 0], format!("{got:?}"))?;
    let reversed: Vec<_> = ids.iter().rev().copied().collect();
    check(
        matches!(d.get_results(&reversed), Err(DispatchError::AlreadyFetched(_))),
        "fetched twice",
    )
}

pub(crate) fn clear_false_keeps_results() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let ids = [d.run(add, (1, 2)), d.run(add, (3, 4))];
    let first = d.get_results_with(&ids, Fetch::keep()).map_err(fail)?;
    let second = d.get_results(&ids).map_err(fail)?;
    check(first == second && first == [Ok(3), Ok(7)], format!("{first:?} / {second:?}"))?;
    check(matches!(d.get_results(&ids[..1]), Err(DispatchError::AlreadyFetched(1))), "cleared")
}

pub(crate) fn join_returns_unfetched_results_in_submission_order() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let a = d.run(nap_ms, 300);
    let b = d.run(echo::<String>(), "hello".into());
    let c = d.run(refuse, "bad".into());
    let e = d.run(add, (20, 22));
    check(one(&d, b)?.map_err(fail)? == "hello", "fetched before join")?;
    let results = d.join();
    let ids: Vec<u64> = results.iter().map(|r| r.id).collect();
    check(ids == [a.seq(), c.seq(), e.seq()], format!("join order {ids:?}"))?;
    check(results[0].decode_as(nap_ms).map_err(fail)? == 300, "first")?;
    check(matches!(results[1].decode_as(refuse), Err(TaskError::Returned { .. })), "second")?;
    check(results[2].decode::<u64>().map_err(fail)? == 42, "third")?;
    // Joined means shut down: new work is cancelled at once, not lost.
    let late = d.run(add, (1, 1));
    check(matches!(one(&d, late)?, Err(TaskError::Cancelled { .. })), "run after join")
}

pub(crate) fn ten_thousand_tasks_each_return_exactly_once() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let runs = Tally::new().map_err(fail)?;
    let ids: Vec<_> = (0..10_000).map(|i| d.run(counted, runs.args(i, 0))).collect();
    let got = d
        .get_results_with(&ids, Fetch::default().within(Duration::from_secs(120)))
        .map_err(fail)?;
    check(got.len() == 10_000, "count")?;
    for (i, r) in got.into_iter().enumerate() {
        check(r.map_err(fail)? == i as u64, format!("task {i}"))?;
    }
    check(d.pending() == 0, "nothing pending")?;
    runs.check_each_once(0..10_000)?;
    let duplicates = d.stats().duplicates;
    check(duplicates == 0, format!("the pool reported {duplicates} tasks twice"))
}

pub(crate) fn large_arguments_and_results() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let data: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let id = d.run(reverse, ByteBuf::from(data.clone()));
    let back = one(&d, id)?.map_err(fail)?.into_vec();
    check(back.len() == data.len(), format!("length {}", back.len()))?;
    check(back.iter().rev().eq(data.iter()), "content")
}

pub(crate) fn blobs_round_trip_and_arrive_shared_with_the_result() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let small = d.run(reverse_blob, blitzen::Blob::from(&b"abc"[..]));
    let large = d.run(reverse_blob, blitzen::Blob::from(data.clone()));
    let results = d.get_task_results(&[small, large], blitzen::Fetch::default()).map_err(fail)?;
    check(results[0].decode::<blitzen::Blob>().map_err(fail)?[..] == b"cba"[..], "small blob")?;
    let back: blitzen::Blob = results[1].decode().map_err(fail)?;
    check(back.iter().rev().eq(data.iter()), "large blob content")?;
    // Decoding shares the received result instead of copying a new buffer.
    let raw = results[1].outcome().map_err(fail)?;
    let range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
    check(range.contains(&(back.as_ptr() as usize)), "the large blob was copied on decoding")
}

pub(crate) fn retries_rerun_a_crashed_task_only_when_asked() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let dir = std::env::temp_dir();
    let tally = |name: &str| {
        let path = dir.join(format!("blitzen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path.to_string_lossy().into_owned()
    };
    let (once, twice, never) = (tally("once"), tally("twice"), tally("never"));
    // One at a time, so each crash is one task's alone.
    let retry_once = RunOptions::default().with_retries(1);
    let results: Result<Vec<_>, _> = [
        (once.clone(), 1, retry_once),
        (twice.clone(), 5, retry_once),
        (never.clone(), 1, RunOptions::default()),
    ]
    .into_iter()
    .map(|(tally, crashes, options)| {
        let id = d.run_with(crash_at_first, (tally, crashes), options);
        d.get_results_with(&[id], Fetch::default().within(WAIT)).map(|mut r| r.remove(0))
    })
    .collect();
    let runs = |p: &str| std::fs::read_to_string(p).map(|t| t.len()).unwrap_or(0);
    let counts = (runs(&once), runs(&twice), runs(&never));
    for p in [&once, &twice, &never] {
        let _ = std::fs::remove_file(p);
    }
    let results = results.map_err(fail)?;
    check(matches!(results[0], Ok(2)), format!("retried once, then succeeded: {:?}", results[0]))?;
    check(
        matches!(results[1], Err(TaskError::WorkerCrashed { .. })),
        format!("retries used up: {:?}", results[1]),
    )?;
    check(
        matches!(results[2], Err(TaskError::WorkerCrashed { .. })),
        format!("no retries asked: reported at once: {:?}", results[2]),
    )?;
    check(counts == (2, 2, 1), format!("runs per task {counts:?}"))
}

pub(crate) fn megabytes_of_stdout_are_captured_and_truncated() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let id = d.run(chatter, 5 << 20);
    let r = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?.remove(0);
    let lines = r.decode_as(chatter).map_err(fail)?;
    check(r.run.stdout.is_truncated(), "5 MiB of output must be truncated")?;
    check(
        r.run.stdout.total_len() == lines * 15,
        format!("total {} for {lines} lines", r.run.stdout.total_len()),
    )?;
    check(r.run.stdout.head.starts_with(b"line 000000000\n"), "head")?;
    let last = format!("line {:09}\n", lines - 1);
    check(r.run.stdout.tail.ends_with(last.as_bytes()), "tail")?;
    check(r.run.stdout.to_text().contains("bytes omitted"), "marked")?;
    // The frames survived: the next task works.
    check(one(&d, d.run(add, (5, 5)))?.map_err(fail)? == 10, "next task")
}

pub(crate) fn unknown_task_and_signature_mismatch_are_clear_errors() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    check(matches!(one(&d, d.run(Missing, ()))?, Err(TaskError::UnknownTask { .. })), "unknown")?;
    match one(&d, d.run(IdentityV2, "x".into()))? {
        Err(e @ TaskError::SignatureMismatch { .. }) => {
            check(e.to_string().contains("fn identity(u64) -> u64"), format!("{e}"))
        }
        other => Err(format!("expected a mismatch, got {other:?}").into()),
    }
}

pub(crate) fn builtin_command_runs_a_program() -> Result<(), Failed> {
    let d = dispatcher(1)?;
    let spec = CommandSpec::new("sh").args(["-c", "read x; echo got $x; exit 4"]).stdin("hi\n");
    let out = one(&d, d.run(command, spec))?.map_err(fail)?;
    check(out.code == Some(4) && &out.stdout[..] == b"got hi\n", format!("{out:?}"))
}

pub(crate) fn ids_of_another_dispatcher_are_refused() -> Result<(), Failed> {
    let a = dispatcher(1)?;
    let b = dispatcher(1)?;
    let id = b.run(add, (1, 1));
    check(matches!(a.get_results(&[id]), Err(DispatchError::UnknownTask(_))), "foreign id")
}

pub(crate) fn map_imap_and_imap_unordered() -> Result<(), Failed> {
    let d = dispatcher(2)?;
    let squares: Vec<u64> = d
        .map(add, (0..100u64).map(|i| (i, i)))
        .map_err(fail)?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check(squares == (0..100).map(|i| 2 * i).collect::<Vec<u64>>(), "map keeps the order")?;
    // imap: submission order, even though the later tasks finish first.
    let ordered: Vec<u64> = d.imap(nap_ms, [300, 10, 10]).map(|r| r.unwrap_or(0)).collect();
    check(ordered == [300, 10, 10], format!("imap {ordered:?}"))?;
    // imap_unordered: completion order (two workers: 600 and 50 start together).
    let finished: Vec<u64> =
        d.imap_unordered(nap_ms, [600, 50, 300]).map(|(_, r)| r.unwrap_or(0)).collect();
    check(finished == [50, 300, 600], format!("imap_unordered {finished:?}"))?;
    check(d.pending() == 0 && d.join().is_empty(), "streams take their results")
}
