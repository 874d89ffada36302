//! The Blitzen README's multicore example: five `f1` tasks sleep 3–5 s at random, `f2` fails
//! after 4 s, on 4 worker processes.
//!
//! Run with `cargo run --release --example multicore`.

use std::time::Duration;

use blitzen::{Fetch, MulticoreDispatcher};

/// Sleeps 3 to 5 seconds at random and returns how long.
#[blitzen::task]
fn f1() -> u64 {
    let delay = random_rng().u64(3..=5);
    std::thread::sleep(Duration::from_secs(delay));
    println!("Finished after {delay} secs.");
    delay
}

/// Fails after `delay` seconds (the Python version raises `ValueError`).
#[blitzen::task]
fn f2(delay: u64) -> Result<(), String> {
    std::thread::sleep(Duration::from_secs(delay));
    Err("Throwing error".to_string())
}

/// A generator seeded from the clock and the process id: workers start within microseconds of
/// each other, so the default seed alone does not keep them apart.
fn random_rng() -> fastrand::Rng {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fastrand::Rng::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    blitzen::worker_main();

    let dispatcher = MulticoreDispatcher::new(4)?;
    let task_id = dispatcher.run(f2, 4);
    let task_ids: Vec<_> = (0..5).map(|_| dispatcher.run(f1, ())).collect();

    println!("Fetching Results.");
    for result in dispatcher.get_task_results(&task_ids, Fetch::default())? {
        let delay: u64 = result.decode()?;
        print!("task {} returned {delay}; it printed: {}", result.id, result.run.stdout.to_text());
    }

    // `join` returns every result not fetched yet (here, f2's), then shuts the workers down.
    for result in dispatcher.join() {
        match result.decode_as(f2) {
            Ok(()) => println!("task {} ({}) succeeded", result.id, result.task),
            Err(error) => {
                println!("task {} ({}) failed as expected:\n  {error}", task_id, result.task)
            }
        }
    }
    Ok(())
}
