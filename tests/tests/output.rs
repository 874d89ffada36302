//! What tasks print while they run, streamed to the driver (`with_output`): lines arrive while
//! the task still runs, on one machine and through a real server and agent, and a task that
//! floods its output is bounded, its dropped lines counted in its result.
//!
//! The workers are this test binary re-executed, so `main` calls `blitzen::worker_main()` before
//! handing over to the test harness.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use blitzen::distributed::DistributedDispatcher;
use blitzen::{
    Backend, Dispatcher, Fetch, MulticoreDispatcher, Output, OutputLines, StdStream, TaskId,
    TaskResult,
};
use blitzen_tests::cluster::{Process, driver, start_program, start_server};
use blitzen_tests::{check, fail, trial};
use libtest_mimic::{Arguments, Failed};

const WAIT: Duration = Duration::from_secs(60);

const AGENT_ENV: &str = "BLITZEN_TEST_OUTPUT_AGENT";

// ----- tasks -----

/// Prints a line to each stream, then waits until the test at `gate` says go, then prints one
/// more.
#[blitzen::task]
fn print_then_wait(gate: String) -> u32 {
    println!("before the gate");
    eprintln!("a warning before the gate");
    let mut byte = [0u8; 1];
    let opened = TcpStream::connect(&gate).and_then(|mut s| s.read_exact(&mut byte));
    println!("after the gate: {opened:?}");
    7
}

/// Prints `lines` lines of 100 bytes as fast as it can.
#[blitzen::task]
fn flood(lines: u64) -> u64 {
    let mut out = std::io::stdout().lock();
    let line = [b'x'; 99];
    for _ in 0..lines {
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
    }
    lines
}

/// Prints `lines` lines that name it and their place: `task 12 line 0`, `task 12 line 1`, ...
#[blitzen::task]
fn numbered(task: u64, lines: u64) -> u64 {
    for k in 0..lines {
        println!("{}", numbered_line(task, k));
    }
    lines
}

fn numbered_line(task: u64, k: u64) -> String {
    format!("task {task} line {k}")
}

/// What [`numbered`] prints.
fn numbered_text(task: u64, lines: u64) -> String {
    (0..lines).map(|k| numbered_line(task, k) + "\n").collect()
}

/// Prints a line, then ends its worker at once, before the worker's reader may have taken it.
#[blitzen::task]
fn last_words(n: u32) -> u32 {
    println!("last words {n}");
    // SAFETY: `_exit` ends the process at once; nothing of this process is used after it.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(3)
    }
}

// ----- helpers -----

/// A dispatcher's streamed lines, into a channel.
fn collect<B: Backend>(d: Dispatcher<B>) -> (Dispatcher<B>, Receiver<OutputLines>) {
    let (tx, rx) = channel();
    let tx = std::sync::Mutex::new(tx);
    let handler = Arc::new(move |lines: &OutputLines| {
        let _ = tx.lock().map(|tx| tx.send(lines.clone()));
    });
    (d.with_output(Output::Handler(handler)), rx)
}

/// The lines in a batch.
fn newlines(lines: &OutputLines) -> usize {
    lines.text.iter().filter(|&&b| b == b'\n').count()
}

/// The text streamed of `task`, in the order it came.
fn text_of(lines: &[OutputLines], task: TaskId) -> String {
    lines.iter().filter(|l| l.task == task).map(|l| l.to_text()).collect()
}

/// Waits for a line of `task` containing `text`; returns what came of it.
fn wait_for_line(
    rx: &Receiver<OutputLines>,
    task: TaskId,
    text: &str,
) -> Result<OutputLines, Failed> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(lines) = rx.recv_timeout(left) else { break };
        if lines.task == task && lines.to_text().contains(text) {
            return Ok(lines);
        }
        seen.push(lines.to_text());
    }
    Err(format!("no line with {text:?} within {WAIT:?}; seen {seen:?}").into())
}

/// The gated task's story, on any dispatcher: its first lines arrive while it waits at the
/// gate, the last before its result; the result has them all captured.
fn gated<B: Backend>(d: Dispatcher<B>, expect_host: bool) -> Result<(), Failed> {
    let (d, rx) = collect(d);
    let gate = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let addr = gate.local_addr().map_err(fail)?.to_string();
    let id = d.run(print_then_wait, addr);
    let untyped = id.untyped();
    let first = wait_for_line(&rx, untyped, "before the gate")?;
    check(first.stream == StdStream::Stdout, format!("{first:?}"))?;
    check(first.host.is_some() == expect_host, format!("host of {first:?}"))?;
    wait_for_line(&rx, untyped, "a warning before the gate")
        .and_then(|l| check(l.stream == StdStream::Stderr, format!("{l:?}")))?;
    // The task still waits at the gate: it has not ended.
    check(d.pending() == 1, format!("{} pending while the task waits", d.pending()))?;
    let (mut waiting, _) = gate.accept().map_err(fail)?;
    waiting.write_all(b"g").map_err(fail)?;
    let results = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let result: &TaskResult = &results[0];
    check(result.decode_as(print_then_wait) == Ok(7), format!("{result:?}"))?;
    // The last line came before the result.
    let last = rx.try_iter().find(|l| l.to_text().contains("after the gate"));
    check(last.is_some(), "the line printed after the gate came before the result")?;
    let stdout = result.run.stdout.to_text();
    check(
        stdout.contains("before the gate") && stdout.contains("after the gate"),
        format!("captured: {stdout:?}"),
    )?;
    check(result.run.stdout.unstreamed == 0, format!("{:?}", result.run.stdout))?;
    check(result.run.stderr.to_text().contains("a warning"), format!("{:?}", result.run.stderr))
}

/// A flood of lines: what is streamed stays within a worker's budget (its burst, then its rate
/// for as long as the task ran), and streamed plus dropped are every line.
fn flooded<B: Backend>(d: Dispatcher<B>) -> Result<(), Failed> {
    const LINES: u64 = 200_000;
    let (d, rx) = collect(d);
    let started = Instant::now();
    let id = d.run(flood, LINES);
    let results = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    let elapsed = started.elapsed();
    let result = &results[0];
    check(result.decode_as(flood) == Ok(LINES), format!("{result:?}"))?;
    let streamed: Vec<OutputLines> = rx.try_iter().collect();
    let bytes: u64 = streamed.iter().map(|l| l.text.len() as u64).sum();
    let lines = streamed.iter().map(newlines).sum::<usize>() as u64;
    let dropped = result.run.stdout.unstreamed;
    check(
        lines + dropped == LINES,
        format!("{lines} lines streamed and {dropped} dropped of {LINES}"),
    )?;
    check(dropped > 0, "a flood past the budget drops lines")?;
    let budget = blitzen::STREAM_BURST as f64 + blitzen::STREAM_RATE as f64 * elapsed.as_secs_f64();
    check(
        bytes as f64 <= budget,
        format!("{bytes} bytes streamed in {elapsed:?}, budget {budget}"),
    )?;
    check(
        result.run.stdout.total_len() == LINES * 100,
        format!("the capture counts all {} bytes: {}", LINES * 100, result.run.stdout.total_len()),
    )
}

// ----- tests -----

/// On one machine: lines arrive while the task runs.
fn a_streamed_task_s_lines_arrive_while_it_runs() -> Result<(), Failed> {
    gated(MulticoreDispatcher::new(2).map_err(fail)?, false)
}

/// On one machine: a flood is bounded and counted.
fn a_task_flooding_its_output_is_bounded_and_its_dropped_lines_counted() -> Result<(), Failed> {
    flooded(MulticoreDispatcher::new(1).map_err(fail)?)
}

/// A task's lines never mix with the next one's on the same worker.
fn each_line_belongs_to_the_task_that_printed_it() -> Result<(), Failed> {
    let (d, rx) = collect(MulticoreDispatcher::new(1).map_err(fail)?);
    let ids: Vec<_> = (0..50).map(|i| d.run(blitzen::echo::<String>(), format!("{i}"))).collect();
    // Each task prints its own number on every line, so lines given to the wrong task show.
    let printed: Vec<_> = (0..50u64).map(|n| d.run(numbered, (n, 3))).collect();
    d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let results = d.get_task_results(&printed, Fetch::default().within(WAIT)).map_err(fail)?;
    let lines: Vec<OutputLines> = rx.try_iter().collect();
    for (n, id) in printed.iter().enumerate() {
        let streamed = text_of(&lines, id.untyped());
        let expected = numbered_text(n as u64, 3);
        check(streamed == expected, format!("task {n} streamed {streamed:?}"))?;
    }
    check(lines.len() <= 50 * 3, format!("{} batches", lines.len()))?;
    for (n, r) in results.iter().enumerate() {
        let text = r.run.stdout.to_text();
        let zeros = text.bytes().take_while(|&b| b == 0).count();
        check(
            text == numbered_text(n as u64, 3),
            format!("task {n} captured {zeros} zeros first, then {:?}", &text[zeros..]),
        )?;
    }
    Ok(())
}

/// Two drivers share an agent's workers, one streamed and one not: each streamed task's lines
/// reach the first driver whole, the other driver's tasks are never streamed, and every task's
/// result has exactly its own output.
fn streamed_and_plain_tasks_share_workers_without_mixing() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_own_agent(&server.addr)?;
    let (streamed, rx) = collect(driver(&server.addr));
    let plain = driver(&server.addr);
    // Streamed tasks print numbers 0 to 39, the plain driver's 1000 to 1039.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for n in 0..40 {
        a.push(streamed.run(numbered, (n, 2)));
        b.push(plain.run(numbered, (1_000 + n, 3)));
    }
    let a_results = streamed.get_task_results(&a, Fetch::default().within(WAIT)).map_err(fail)?;
    let b_results = plain.get_task_results(&b, Fetch::default().within(WAIT)).map_err(fail)?;
    for (n, r) in a_results.iter().enumerate() {
        let text = r.run.stdout.to_text();
        check(text == numbered_text(n as u64, 2), format!("streamed task {n} captured {text:?}"))?;
    }
    for (n, r) in b_results.iter().enumerate() {
        let text = r.run.stdout.to_text();
        let expected = numbered_text(1_000 + n as u64, 3);
        check(text == expected, format!("plain task {n} captured {text:?}"))?;
    }
    let lines: Vec<OutputLines> = rx.try_iter().collect();
    for (n, id) in a.iter().enumerate() {
        let text = text_of(&lines, id.untyped());
        check(text == numbered_text(n as u64, 2), format!("streamed task {n} sent {text:?}"))?;
    }
    let total: usize = lines.iter().map(newlines).sum();
    check(total == 80, format!("{total} lines streamed, not the 80 of the streamed tasks"))
}

/// What a streamed task printed just before its worker died is in the crash's output, every
/// time: the pool takes what the dead worker's reader had not.
fn a_streamed_task_s_last_words_before_its_worker_dies_are_kept() -> Result<(), Failed> {
    let (d, _rx) = collect(MulticoreDispatcher::new(2).map_err(fail)?);
    let ids: Vec<_> = (0..20).map(|n| d.run(last_words, n)).collect();
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    for (n, r) in results.iter().enumerate() {
        check(
            matches!(r.outcome(), Err(blitzen::TaskError::WorkerCrashed { .. })),
            format!("task {n}: {:?}", r.outcome()),
        )?;
        let stdout = r.run.stdout.to_text();
        check(stdout == format!("last words {n}\n"), format!("task {n} kept {stdout:?}"))?;
    }
    Ok(())
}

/// A line printed while the agent's link to the server is cut is not lost without a trace:
/// it is streamed (the agent reconnected and was handed the task again first) or counted in
/// the result.
fn a_line_printed_while_the_agent_reconnects_is_streamed_or_counted() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let proxy = blitzen_tests::proxy::Proxy::start(&server.addr).map_err(fail)?;
    let agent = start_own_agent(&proxy.addr)?;
    let (d, rx) = collect(driver(&server.addr));
    let gate = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    let id = d.run(print_then_wait, gate.local_addr().map_err(fail)?.to_string());
    wait_for_line(&rx, id.untyped(), "before the gate")?;
    let (mut waiting, _) = gate.accept().map_err(fail)?;
    proxy.cut();
    // The line comes while the agent is off, or just back.
    waiting.write_all(b"g").map_err(fail)?;
    let results = d.get_task_results(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    check(results[0].decode_as(print_then_wait) == Ok(7), format!("{:?}", results[0]))?;
    check(
        agent.wait_for_log("connected", 2, WAIT),
        format!("the agent reconnected:\n{}", agent.log_text()),
    )?;
    let streamed = rx.try_iter().filter(|l| l.to_text().contains("after the gate")).count();
    let counted = results[0].run.stdout.unstreamed;
    check(
        streamed as u64 + counted == 1,
        format!("the last line: streamed {streamed} times, counted {counted} times"),
    )?;
    check(results[0].run.stdout.to_text().contains("after the gate"), "and captured")
}

fn start_own_agent(server: &str) -> Result<Process, Failed> {
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(AGENT_ENV, server);
    let agent = start_program(program, "own-agent").map_err(fail)?;
    check(
        agent.wait_for_log("connected", 1, WAIT),
        format!("no connection:\n{}", agent.log_text()),
    )?;
    Ok(agent)
}

/// Through a real server and agent: lines arrive, with the agent's host, while the task runs.
fn a_streamed_task_s_lines_cross_the_cluster_while_it_runs() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_own_agent(&server.addr)?;
    gated(driver(&server.addr), true)
}

/// Through a real server and agent: a flood is bounded and counted.
fn a_flood_on_a_cluster_is_bounded_and_counted() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let _agent = start_own_agent(&server.addr)?;
    flooded(driver(&server.addr))
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    if let Ok(server) = std::env::var(AGENT_ENV) {
        return match DistributedDispatcher::new(server).spawn_client(blitzen::tasks![], 2) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    let tests = vec![
        trial!(a_streamed_task_s_lines_arrive_while_it_runs),
        trial!(a_task_flooding_its_output_is_bounded_and_its_dropped_lines_counted),
        trial!(each_line_belongs_to_the_task_that_printed_it),
        trial!(a_streamed_task_s_lines_cross_the_cluster_while_it_runs),
        trial!(a_flood_on_a_cluster_is_bounded_and_counted),
        trial!(streamed_and_plain_tasks_share_workers_without_mixing),
        trial!(a_streamed_task_s_last_words_before_its_worker_dies_are_kept),
        trial!(a_line_printed_while_the_agent_reconnects_is_streamed_or_counted),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
