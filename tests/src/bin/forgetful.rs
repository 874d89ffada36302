//! A program that creates a dispatcher but forgets to call `blitzen::worker_main()`, with the
//! `main` of the README (returning `Result<(), Box<dyn Error>>`): the dispatcher must refuse to
//! start with a message saying what to do, instead of re-running `main` in every worker forever,
//! and the message Rust prints for the returned error must be that sentence.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _dispatcher = blitzen::MulticoreDispatcher::new(1)?;
    println!("started");
    Ok(())
}
