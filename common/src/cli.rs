//! Pieces shared by the command-line programs (`blitzen-server`, `blitzen-client`).

use std::time::Duration;

/// Parses a number of seconds (fractions allowed) for a command-line flag.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 =
        text.trim().parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a usable number of seconds"))
}

/// [`parse_secs`] for a limit that must be more than zero.
pub fn parse_positive_secs(text: &str) -> Result<Duration, String> {
    let d = parse_secs(text)?;
    if d.is_zero() {
        return Err("must be more than 0 seconds (leave the flag out for no limit)".into());
    }
    Ok(d)
}

/// A span of time for long settings: seconds (`90`, `1.5`), or a number with a unit — `s`,
/// `m`, `h` or `d` (`90s`, `5m`, `1h`, `1.5d`); more than zero.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("`{text}` is not a span of time (seconds, or a number with s, m, h or d)")
    })?;
    match Duration::try_from_secs_f64(value * scale) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("`{text}` must be a span of time more than zero")),
    }
}

/// Ends a program's `main`: prints the error once, with the causes its message does not
/// already quote (also to the log, when the log goes to a file), flushes the log, and gives the
/// exit code.
pub fn finish<E>(program: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&*e.into());
            if crate::logging::writes_to_file() {
                tracing::error!("{text}");
            }
            eprintln!("{program}: {text}");
            std::process::ExitCode::FAILURE
        }
    };
    crate::logging::flush();
    code
}

/// An error and its causes on one line, each cause left out when the text before already
/// quotes it (many errors include their source's message).
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Parses a `--log-level` flag: a level or a `RUST_LOG`-style directive, refused with the
/// valid choices before the program starts.
pub fn parse_log_level(text: &str) -> Result<String, String> {
    crate::logging::check_level(text).map_err(|e| e.to_string())
}

/// Parses a positive count for a flag such as `--workers`, at most `max`.
pub fn parse_count(text: &str, max: usize) -> Result<usize, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > max as u64 => Err(format!("{n} is more than the most allowed, {max}")),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// This process for logs and listings: its program's file name and its pid, `driver[4242]`
/// (`default` when the program's name is unknown).
pub fn process_name(default: &str) -> String {
    let program = std::env::args_os().next().map(std::path::PathBuf::from);
    let name = (program.as_ref().and_then(|p| p.file_name()))
        .map_or_else(|| default.to_string(), |n| n.to_string_lossy().into_owned());
    format!("{name}[{}]", std::process::id())
}

/// Waits for Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing that the program is up, and a signal
/// that comes right after the announcement is not fatal. If they cannot be installed, waits
/// forever (the program can still be stopped by other means). Call it inside a Tokio runtime.
pub fn termination() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(interrupt) => {}
            _ = wait(terminate) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_of_time_take_a_unit() {
        use std::time::Duration;
        let parsed = |t| super::parse_span(t);
        assert_eq!(parsed("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parsed("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parsed("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parsed("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parsed("0.5s"), Ok(Duration::from_millis(500)));
        for bad in ["", "m", "5x", "-3m", "0"] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        for bad in ["-1", "abc", "inf", "NaN", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_are_bounded_where_they_are_parsed() {
        assert_eq!(parse_count("4", 10), Ok(4));
        for bad in ["0", "11", "99999999999", "4294967297", "-1", "x"] {
            assert!(parse_count(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot read /x: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from(std::io::ErrorKind::NotFound));
        let text = error_text(&e);
        assert_eq!(text.matches("not found").count(), 1, "{text}");
    }
}
