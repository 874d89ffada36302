//! Counting how many times each task *ran*, by what its runs left behind, so that "once" is
//! checked where it can break: a result that reached the caller once proves nothing about the
//! runs behind it (the dispatcher keeps the first result of a task and drops the others).
//!
//! - [`counted`](const@counted): a task that appends its number to a file as it starts, then naps.
//! - [`Tally`]: that file, read back as a count per number.
//! - [`own_agent_main`] and [`start_own_agent`]: this test program as a cluster agent whose
//!   workers know [`counted`](const@counted) (the stock `blitzen-client` runs the built-in tasks only).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::Command;
use std::time::Duration;

use libtest_mimic::Failed;

use crate::cluster::{Process, TempFile, start_program};
use crate::{check, fail};

/// Appends `n` to `file` (one `O_APPEND` write, so runs on many workers never interleave),
/// then sleeps `millis` milliseconds; returns `n`.
#[blitzen::task]
pub fn counted(file: String, n: u64, millis: u64) -> Result<u64, String> {
    let mut f =
        std::fs::OpenOptions::new().append(true).open(&file).map_err(|e| format!("{file}: {e}"))?;
    f.write_all(format!("{n}\n").as_bytes()).map_err(|e| format!("{file}: {e}"))?;
    std::thread::sleep(Duration::from_millis(millis));
    Ok(n)
}

/// The file [`counted`](const@counted) tasks append to, removed when dropped.
#[derive(Debug)]
pub struct Tally {
    file: TempFile,
}

impl Tally {
    /// A new, empty tally.
    pub fn new() -> io::Result<Self> {
        Ok(Self { file: TempFile::new("tally", b"")? })
    }

    /// The arguments of a [`counted`](const@counted) task that counts run `n` and then naps `millis` ms.
    pub fn args(&self, n: u64, millis: u64) -> (String, u64, u64) {
        (self.file.arg().to_string(), n, millis)
    }

    /// The file it counts in.
    pub fn path(&self) -> &std::path::Path {
        &self.file.path
    }

    /// Runs so far, per number.
    pub fn runs(&self) -> io::Result<BTreeMap<u64, usize>> {
        let mut runs = BTreeMap::new();
        for n in self.order()? {
            *runs.entry(n).or_insert(0) += 1;
        }
        Ok(runs)
    }

    /// The numbers in the order they ran (one worker: the order they started).
    pub fn order(&self) -> io::Result<Vec<u64>> {
        let text = std::fs::read_to_string(&self.file.path)?;
        let parse =
            |line: &str| line.parse().map_err(|e| io::Error::other(format!("{line:?}: {e}")));
        text.lines().map(parse).collect()
    }

    /// Checks the order tasks of one worker ran in under priorities: number 0, of a low
    /// priority, submitted first, then `highs` of a higher one, numbered from 1 — the higher
    /// ones first in submission order, until the low one has risen (one level a second while
    /// it waits, as their tasks take longer than that) and goes before they are all done.
    pub fn check_aging(&self, highs: u64) -> Result<(), Failed> {
        let order = self.order().map_err(fail)?;
        let low = order.iter().position(|&n| n == 0);
        let low = low.ok_or_else(|| fail(format!("the low task never ran: {order:?}")))?;
        let highs_first: Vec<u64> = (1..=low as u64).collect();
        check(low >= 1 && order[..low] == highs_first[..], format!("higher first: {order:?}"))?;
        check((low as u64) < highs, format!("the low one waited for every higher one: {order:?}"))?;
        let mut rest = order.clone();
        rest.remove(low);
        let all: Vec<u64> = (1..=highs).collect();
        check(rest == all, format!("each once, in order: {order:?}"))
    }

    /// Fails unless every number of `numbers` ran exactly once and no other ran at all, saying
    /// which did not.
    pub fn check_each_once(&self, numbers: impl IntoIterator<Item = u64>) -> Result<(), Failed> {
        let runs = self.runs().map_err(fail)?;
        let mut wrong = Vec::new();
        let mut expected = 0;
        for n in numbers {
            expected += 1;
            match runs.get(&n) {
                Some(1) => {}
                Some(&k) => wrong.push(format!("{n} ran {k} times")),
                None => wrong.push(format!("{n} never ran")),
            }
        }
        let total: usize = runs.values().sum();
        check(
            wrong.is_empty() && total == expected,
            format!(
                "{total} runs of {expected} tasks; {}{}",
                wrong.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                if wrong.len() > 10 {
                    format!(" and {} more", wrong.len() - 10)
                } else {
                    String::new()
                }
            ),
        )
    }
}

/// Set to `SERVER WORKERS NAME HEARTBEAT_MS`, this program is a cluster agent
/// ([`own_agent_main`]).
const OWN_AGENT_ENV: &str = "BLITZEN_TEST_OWN_AGENT";

/// Call first thing in a test program's `main`, after `blitzen::worker_main()`: in a process
/// that [`start_own_agent`] started, it runs an agent serving every task of this program until
/// SIGTERM, then exits; elsewhere it returns at once.
pub fn own_agent_main() {
    let Ok(spec) = std::env::var(OWN_AGENT_ENV) else { return };
    let code = match serve_as_agent(&spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("own agent ({spec}): {e}");
            1
        }
    };
    std::process::exit(code);
}

fn serve_as_agent(spec: &str) -> Result<(), String> {
    let [server, workers, name, heartbeat_ms] = spec.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("{OWN_AGENT_ENV} is not `SERVER WORKERS NAME HEARTBEAT_MS`"));
    };
    let workers = workers.parse().map_err(|e| format!("workers: {e}"))?;
    let heartbeat_ms = heartbeat_ms.parse().map_err(|e| format!("heartbeat: {e}"))?;
    blitzen::logging::set_loglevel("info").map_err(|e| e.to_string())?;
    let mut config = blitzen_client::AgentConfig::new(server, workers);
    config.host = name.to_string();
    config.heartbeat = Duration::from_millis(heartbeat_ms);
    blitzen_client::run_until_signal(config).map_err(|e| e.to_string())
}

/// Starts this test program as an agent named `name` with `workers` workers for `server`,
/// heartbeats every `heartbeat` (the stock agent's default is 5 s), and waits until it is
/// connected. The program's `main` must call [`own_agent_main`].
pub fn start_own_agent(
    server: &str,
    workers: usize,
    name: &str,
    heartbeat: Duration,
) -> Result<Process, Failed> {
    let mut program = Command::new(std::env::current_exe().map_err(fail)?);
    let spec = format!("{server} {workers} {name} {}", heartbeat.as_millis());
    program.env(OWN_AGENT_ENV, spec);
    let agent = start_program(program, name).map_err(fail)?;
    let connected = agent.wait_for_log("connected", 1, Duration::from_secs(60));
    check(connected, format!("{name} did not connect:\n{}", agent.log_text()))?;
    Ok(agent)
}
