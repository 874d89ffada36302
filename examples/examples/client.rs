//! The seed's client script: an agent with 6 workers that knows the tasks of `common`.
//!
//! Run with `cargo run --release --example client -- --server 127.0.0.1 --workers 6`.
//! Stop it with Ctrl-C.

#[path = "common/mod.rs"]
mod common;

use blitzen::distributed::DistributedDispatcher;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The workers are this program re-executed: they must become workers here.
    blitzen::worker_main();

    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let server = flag("--server").cloned().unwrap_or_else(|| "127.0.0.1".to_string());
    let workers = flag("--workers").map(|s| s.parse::<usize>()).transpose()?.unwrap_or(6);

    let backend = DistributedDispatcher::new(server);
    // The tasks are in this program's own module `common`; a crate of tasks would be named
    // here: `blitzen::tasks![my_tasks]`.
    backend.spawn_client(blitzen::tasks![], workers)?;
    Ok(())
}
