//! Blitzen in one command: a mixed batch on worker processes of this machine, where one task
//! returns an error, one panics, one crashes its worker and one runs past its timeout — and the
//! program carries on, with every other result intact and the pool back to full strength.
//!
//! Run with `cargo run --release --example quickstart`.

use std::time::{Duration, Instant};

use blitzen::{CommandSpec, MulticoreDispatcher, TaskId, command, sleep};

/// A CPU-bound task: the number of primes below `n`.
#[blitzen::task]
fn count_primes(n: u64) -> u64 {
    (2..n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u64
}

/// Parses a number, failing on bad input.
#[blitzen::task]
fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
    text.trim().parse()
}

/// Panics: a bug in a task is reported with its message and location.
#[blitzen::task]
fn buggy(values: Vec<u32>) -> u32 {
    values[10]
}

/// Kills its own worker process, as a segfault or a C library abort would.
#[blitzen::task]
fn crash() {
    eprintln!("this worker is about to abort");
    std::process::abort();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    blitzen::worker_main();

    let started = Instant::now();
    let dispatcher = MulticoreDispatcher::new(4)?;
    println!("4 workers ready in {:?}\n", started.elapsed());

    let primes: Vec<TaskId<u64>> = [100_000, 200_000, 300_000, 400_000]
        .iter()
        .map(|&n| dispatcher.run(count_primes, n))
        .collect();
    let mixed = [
        dispatcher.run(parse, "42".into()).untyped(),
        dispatcher.run(parse, "forty-two".into()).untyped(),
        dispatcher.run(buggy, vec![1, 2, 3]).untyped(),
        dispatcher.run(crash, ()).untyped(),
        dispatcher.run_with_timeout(sleep, 30.0, Duration::from_secs(1)).untyped(),
        dispatcher.run(command, CommandSpec::new("uname").arg("-sr")).untyped(),
    ];

    for (n, result) in
        [100_000, 200_000, 300_000, 400_000].iter().zip(dispatcher.get_results(&primes)?)
    {
        println!("primes below {n:>7}: {}", result?);
    }
    println!();

    for result in dispatcher.get_task_results(&mixed, Default::default())? {
        let shown = match result.task.as_ref() {
            "parse" => result.decode_as(parse).map(|v| v.to_string()),
            "command" => result.decode_as(command).map(|out| {
                format!("{} (exit {:?})", String::from_utf8_lossy(&out.stdout).trim(), out.code)
            }),
            _ => result.decode::<serde_ignored::Any>().map(|_| "ok".to_string()),
        };
        match shown {
            Ok(value) => println!("task {} {:<8} -> {value}", result.id, result.task),
            Err(error) => println!("task {} {:<8} -> error: {error}\n", result.id, result.task),
        }
    }

    let status = dispatcher.wait_for_workers(Duration::from_secs(10)).unwrap_or_default();
    println!(
        "workers alive after all that: {} (replaced {}), total time {:?}",
        status.len(),
        dispatcher.status().replacements,
        started.elapsed()
    );
    dispatcher.shutdown();
    Ok(())
}

/// Decodes any value, for tasks whose output this example does not look at.
mod serde_ignored {
    #[derive(Debug)]
    pub struct Any;

    impl<'de> serde::Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Any)
        }
    }
}
