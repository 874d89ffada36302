//! Blitzen in one command: a local cluster — a server, an agent and its worker processes, all
//! started by this program — runs a mixed batch in which one task returns an error, one panics,
//! one crashes its worker and one runs past its timeout. Everything else completes, and every
//! failure says what happened, where.
//!
//! Run with `cargo run --release --example quickstart`.

use std::time::{Duration, Instant};

use blitzen::distributed::LocalCluster;
use blitzen::{CommandSpec, TaskId, command, sleep};

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
    // Keep the demo's output readable: only errors are logged unless RUST_LOG says otherwise
    // (try RUST_LOG=info, or blitzen::logging::set_loglevel("debug") for a line per task).
    if std::env::var_os("RUST_LOG").is_none() {
        blitzen::logging::set_loglevel("error")?;
    }

    let started = Instant::now();
    let cluster = LocalCluster::start(4)?;
    let dispatcher = cluster.dispatcher();
    println!("local cluster on {} with 4 worker processes\n", cluster.addr());

    let sizes: Vec<u64> = (1..=24).map(|i| i * 20_000).collect();
    let primes: Vec<TaskId<u64>> = sizes.iter().map(|&n| dispatcher.run(count_primes, n)).collect();
    let mixed = [
        dispatcher.run(parse, "42".into()).untyped(),
        dispatcher.run(parse, "forty-two".into()).untyped(),
        dispatcher.run(buggy, vec![1, 2, 3]).untyped(),
        dispatcher.run(crash, ()).untyped(),
        dispatcher.run_with_timeout(sleep, 30.0, Duration::from_secs(2)).untyped(),
        dispatcher.run(command, CommandSpec::new("uname").arg("-sr")).untyped(),
    ];

    let counts = dispatcher.get_results(&primes)?;
    for (n, count) in sizes.iter().zip(counts).step_by(6) {
        println!("primes below {n:>7}: {}", count?);
    }
    println!("... and {} more\n", sizes.len() - 4);

    for result in dispatcher.get_task_results(&mixed, Default::default())? {
        let shown = match result.task.as_ref() {
            "parse" => result.decode_as(parse).map(|v| v.to_string()),
            "command" => result.decode_as(command).map(|out| {
                format!("{} (exit {:?})", String::from_utf8_lossy(&out.stdout).trim(), out.code)
            }),
            _ => result.decode::<serde::de::IgnoredAny>().map(|_| "ok".to_string()),
        };
        match shown {
            Ok(value) => println!("task {:>2} {:<8} -> {value}", result.id, result.task),
            Err(error) => println!("task {:>2} {:<8} -> error: {error}\n", result.id, result.task),
        }
    }

    dispatcher.join();
    cluster.shutdown();
    println!("all done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
