//! A user's own client, as the README shows it: its tasks live in a library crate
//! (`blitzen-test-tasks`) that this program names only in `blitzen::tasks![]`.
//!
//! `blitzen-own-client SERVER WORKERS`

use blitzen::distributed::DistributedDispatcher;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    blitzen::worker_main();
    let mut args = std::env::args().skip(1);
    let server = args.next().ok_or("usage: blitzen-own-client SERVER WORKERS")?;
    let workers = args.next().ok_or("usage: blitzen-own-client SERVER WORKERS")?.parse()?;
    DistributedDispatcher::new(server)
        .spawn_client(blitzen::tasks![blitzen_test_tasks], workers)?;
    Ok(())
}
