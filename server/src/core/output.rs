//! Lines streamed tasks print, on their way from agents to drivers.
//!
//! An agent sends the lines of the streamed tasks it runs as they come
//! ([`FromAgent::Output`](blitzen_protocol::cluster::FromAgent::Output)); they join their
//! driver's batch for the end of the turn, ahead of its results, so a task's lines always
//! reach its driver before its result. Each driver may receive [`DRIVER_OUTPUT_BURST`] bytes
//! of lines at once and [`DRIVER_OUTPUT_RATE`] per second past that; what is beyond, or meant
//! for a driver not connected, is dropped and counted with the task, and the count goes into
//! its result (`Captured::unstreamed`). The server thus never holds more output than that per
//! driver, however much its tasks print; their results carry the captured output in full, as
//! any task's.

use std::time::Instant;

use blitzen_protocol::Finished;
use blitzen_protocol::ids::{ConnId, TaskKey};
use blitzen_protocol::output::{AgentOutput, TaskOutput};
use tracing::debug;

use super::Core;

/// Bytes of lines a driver may be sent at once.
pub(super) const DRIVER_OUTPUT_BURST: u64 = 4 * 1024 * 1024;

/// Bytes of lines per second a driver is sent past its burst.
pub(super) const DRIVER_OUTPUT_RATE: u64 = 1024 * 1024;

/// What a driver may still be sent of its tasks' lines.
#[derive(Debug)]
pub(super) struct OutputBudget {
    bytes: u64,
    refilled: Instant,
}

impl OutputBudget {
    pub(super) fn new(now: Instant) -> Self {
        Self { bytes: DRIVER_OUTPUT_BURST, refilled: now }
    }

    /// Takes `len` bytes if there are so many left.
    fn take(&mut self, len: u64, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.refilled).as_secs_f64() * DRIVER_OUTPUT_RATE as f64;
        if refill >= 1.0 {
            self.bytes = (self.bytes + refill as u64).min(DRIVER_OUTPUT_BURST);
            self.refilled = now;
        }
        let fits = len <= self.bytes;
        if fits {
            self.bytes -= len;
        }
        fits
    }
}

impl Core {
    /// An agent's streamed lines: each goes to its task's driver, if that one is connected and
    /// within its budget; else it is counted with the task.
    pub(super) fn agent_output(&mut self, conn: ConnId, output: Vec<AgentOutput>) {
        let Some(agent) = self.agents.get(&conn) else { return };
        let host = agent.host.clone();
        let now = Instant::now();
        for AgentOutput { key, lines } in output {
            let Some(agent) = self.agents.get(&conn) else { return };
            if !agent.running.contains_key(&key) {
                // It ended (or moved) meanwhile: nobody waits for these.
                continue;
            }
            let Some(task) = self.tasks.get(key) else { continue };
            let (driver, id) = (task.driver, task.id);
            let sent = self.drivers.get_mut(&driver).is_some_and(|d| {
                let fits = d.tx.is_some() && d.output_budget.take(lines.text.len() as u64, now);
                if fits {
                    d.output.push(TaskOutput { id, host: host.clone(), lines: lines.clone() });
                }
                fits
            });
            if !sent {
                self.unstreamed.count(key, lines.stream, lines.count());
            }
        }
    }

    /// The lines of `key` that were not sent, added into its result; forgotten either way.
    pub(super) fn add_unstreamed(&mut self, key: TaskKey, run: &mut Finished) {
        if let Some([stdout, stderr]) = self.unstreamed.add_into(&key, run) {
            debug!(%key, stdout, stderr, "lines of a task not streamed to its driver");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Event;
    use super::super::tests::{agent, conn, core, done, driver, kind, submission, turn};
    use super::*;
    use crate::ServerConfig;
    use blitzen_protocol::Lines;
    use blitzen_protocol::StdStream;
    use blitzen_protocol::cluster::{TaskKind, ToAgent, ToDriver};
    use bytes::Bytes;
    use std::time::Duration;

    /// A streamed task's lines reach its driver before its result; lines past the driver's
    /// budget are counted into the result instead.
    #[test]
    fn lines_go_before_their_result_and_those_past_the_budget_are_counted() {
        let mut c = core(ServerConfig::default());
        let mut d = driver(&mut c, 1);
        let streamed = TaskKind { stream: true, ..kind("t") };
        let tasks = vec![submission(0, 0), submission(1, 0)];
        c.on_event(Event::Submit { conn: conn(1), kinds: vec![streamed], tasks });
        let mut a = agent(&mut c, 10, 2, &["t"]);
        turn(&mut c);
        let mut keys = Vec::new();
        while let Ok(ToAgent::Run(batch)) = a.try_recv() {
            assert!(batch.iter().all(|a| a.stream), "the agent is told to stream");
            keys.extend(batch.into_iter().map(|a| a.key));
        }
        assert_eq!(keys.len(), 2);
        let line = |text: &'static str| Lines { stream: StdStream::Stdout, text: text.into() };
        let flood = Lines {
            stream: StdStream::Stdout,
            text: Bytes::from(vec![b'x'; DRIVER_OUTPUT_BURST as usize - 4]),
        };
        let late = Lines { stream: StdStream::Stderr, ..line("two\nthree\n") };
        let output = vec![
            AgentOutput { key: keys[0], lines: line("one\n") },
            AgentOutput { key: keys[1], lines: flood },
            AgentOutput { key: keys[1], lines: late },
        ];
        c.on_event(Event::AgentOutput { conn: conn(10), output });
        c.on_event(Event::AgentDone { conn: conn(10), results: done(&keys), recovered: false });
        turn(&mut c);
        let mut heard = Vec::new();
        while let Ok(msg) = d.try_recv() {
            match msg {
                ToDriver::Output(lines) => heard.push(format!("output {}", lines.len())),
                ToDriver::Results(reports) => {
                    for r in reports {
                        let unstreamed = (r.run.stdout.unstreamed, r.run.stderr.unstreamed);
                        heard.push(format!("result {} {unstreamed:?}", r.id.get()));
                    }
                }
                _ => {}
            }
        }
        // The flood took what the first line left of the burst: the last two are counted.
        assert_eq!(heard, ["output 2", "result 0 (0, 0)", "result 1 (0, 2)"], "{heard:?}");
    }

    #[test]
    fn a_driver_gets_its_burst_at_once_then_its_rate() {
        let start = Instant::now();
        let mut budget = OutputBudget::new(start);
        assert!(budget.take(DRIVER_OUTPUT_BURST - 10, start));
        assert!(!budget.take(11, start), "past the burst");
        assert!(budget.take(10, start));
        let later = start + Duration::from_millis(500);
        assert!(budget.take(DRIVER_OUTPUT_RATE / 2 - 1000, later), "half a second's worth");
        assert!(!budget.take(2000, later));
        let much_later = start + Duration::from_secs(3600);
        assert!(budget.take(DRIVER_OUTPUT_BURST, much_later), "refilled up to the burst");
        assert!(!budget.take(1, much_later), "and no further");
    }
}
