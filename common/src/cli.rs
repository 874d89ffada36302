//! Pieces shared by the command-line programs (`blitzen-server`, `blitzen-client`).

use std::time::Duration;

/// Parses a number of seconds (fractions allowed) for a command-line flag.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 =
        text.trim().parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a usable number of seconds"))
}

/// Ends a program's `main`: logs and prints the error (with its chain of causes, for `anyhow`
/// errors), flushes the log, and gives the exit code.
pub fn finish<E: std::fmt::Display>(
    program: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    crate::logging::flush();
    code
}

/// Waits for Ctrl-C or SIGTERM. If the signal handlers cannot be installed, waits forever
/// (the program can still be stopped by other means).
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        for bad in ["-1", "abc", "inf", "NaN", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
