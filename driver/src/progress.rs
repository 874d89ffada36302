//! A progress bar for long waits, drawn on stderr only when it is a terminal.
//!
//! Waits shorter than [`DELAY`] draw nothing, and `BLITZEN_PROGRESS=0` turns it off.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How long a wait lasts before the bar appears.
pub(crate) const DELAY: Duration = Duration::from_secs(1);

/// How often the bar is redrawn at most (and how often a wait wakes to redraw it).
pub(crate) const REDRAW: Duration = Duration::from_millis(200);

const WIDTH: usize = 30;

#[derive(Debug)]
pub(crate) struct Progress {
    total: usize,
    started: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub(crate) fn new(total: usize) -> Self {
        let enabled = total > 0
            && std::io::stderr().is_terminal()
            && std::env::var_os("BLITZEN_PROGRESS").is_none_or(|v| v != "0");
        Self { total, started: Instant::now(), last_draw: None, enabled }
    }

    /// Whether waits should wake every [`REDRAW`] to keep the bar moving.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Redraws if it is time; `done()` is only called when a redraw happens.
    pub(crate) fn update(&mut self, done: impl FnOnce() -> usize) {
        if !self.enabled || self.started.elapsed() < DELAY {
            return;
        }
        if self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let line = render(done(), self.total, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }

    /// Draws the final state and ends the line, if the bar was shown.
    pub(crate) fn finish(&mut self) {
        if self.enabled && self.last_draw.is_some() {
            let line = render(self.total, self.total, self.started.elapsed());
            let _ = writeln!(std::io::stderr().lock(), "\r{line}");
        }
    }
}

fn render(done: usize, total: usize, elapsed: Duration) -> String {
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    format!("[{bar}] {done}/{total} tasks, {:.1} s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_progress() {
        assert_eq!(
            render(0, 4, Duration::from_millis(1500)),
            format!("[>{}] 0/4 tasks, 1.5 s", " ".repeat(29))
        );
        assert_eq!(
            render(2, 4, Duration::ZERO),
            format!("[{}>{}] 2/4 tasks, 0.0 s", "=".repeat(15), " ".repeat(14))
        );
        assert_eq!(render(4, 4, Duration::ZERO), format!("[{}] 4/4 tasks, 0.0 s", "=".repeat(30)));
    }
}
