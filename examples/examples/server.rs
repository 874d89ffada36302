//! The seed's server script: serves a Blitzen cluster on this machine's address for a while.
//!
//! Run with `cargo run --release --example server -- --duration 30` (add `--bind IP` to serve
//! another address than 127.0.0.1, which needs the cluster's secret in `BLITZEN_SECRET`, or
//! `--insecure`).

use std::time::Duration;

use blitzen::distributed::DistributedDispatcher;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let duration = flag("--duration").map(|s| s.parse::<f64>()).transpose()?.unwrap_or(30.0);
    let bind = flag("--bind").cloned().unwrap_or_else(|| "127.0.0.1".to_string());
    let insecure = args.iter().any(|a| a == "--insecure");

    let backend = DistributedDispatcher::new(bind).allow_insecure(insecure);
    println!("serving on {} for {duration} s", backend.server());
    backend.spawn_server(Duration::from_secs_f64(duration))?;
    Ok(())
}
