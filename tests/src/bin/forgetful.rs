//! A program that creates a dispatcher but forgets to call `blitzen::worker_main()`: the
//! dispatcher must refuse to start with a message saying so, instead of re-running `main` in
//! every worker forever.

fn main() -> std::process::ExitCode {
    match blitzen::MulticoreDispatcher::new(1) {
        Ok(_) => {
            println!("started");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
