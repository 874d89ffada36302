//! A program that starts a dispatcher with a task that starts a child process, prints its
//! workers' pids, then waits to be killed. The test kills it with SIGKILL (no shutdown, no
//! destructors) and checks that no worker and no child of a task outlives it.
//!
//! Usage: `blitzen-orphan ADDRESS`, where ADDRESS is a `blitzen_tests::Reports` rendezvous.

use std::io::Write;
use std::time::Duration;

/// Starts `sleep 1000`, reports this worker's pid and the child's, then hangs.
#[blitzen::task]
fn hang_with_child(address: String) -> Result<(), String> {
    let child =
        std::process::Command::new("sleep").arg("1000").spawn().map_err(|e| e.to_string())?;
    blitzen_tests::report(&address, &[std::process::id(), child.id()])
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1000));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    blitzen::worker_main();
    let address = std::env::args().nth(1).ok_or("usage: blitzen-orphan ADDRESS")?;
    let dispatcher = blitzen::MulticoreDispatcher::new(2)?;
    let pids = dispatcher.wait_for_workers(Duration::from_secs(30)).ok_or("workers not ready")?;
    let _task = dispatcher.run(hang_with_child, address);
    let line: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(1000));
    Ok(())
}
