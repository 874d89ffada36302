//! The seed's driver script: five tasks sleeping 5–9 s, each with a 7 s timeout, on the
//! cluster; prints which finished and which timed out.
//!
//! Run with `cargo run --release --example driver -- --server 127.0.0.1`, with the `server` and
//! `client` examples running.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use blitzen::TaskError;
use blitzen::distributed::DistributedDispatcher;
use common::time_consuming_function;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let server = flag("--server").cloned().unwrap_or_else(|| "127.0.0.1".to_string());

    let backend = DistributedDispatcher::new(server);
    // With a cluster you can give each task an amount of time to finish.
    let task_ids: Vec<_> = (0..5)
        .map(|i| backend.run_with_timeout(time_consuming_function, i + 5, Duration::from_secs(7)))
        .collect();

    println!("Requesting results.");
    let results = backend.get_results(&task_ids)?;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(delay) => println!("task {}: finished after {delay} s", task_ids[i]),
            Err(e @ TaskError::TimedOut { .. }) => {
                println!("task {}: timed out\n  {e}", task_ids[i])
            }
            Err(e) => println!("task {}: failed\n  {e}", task_ids[i]),
        }
    }
    backend.join();
    Ok(())
}
