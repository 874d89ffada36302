//! The other end of an observer connection: what `blitzen-server status`, `failures` and
//! `cancel` run — one request to a server ([`ask`]), and the answer rendered for a person
//! ([`render_status`], [`render_failures`]).

use std::fmt::Write as _;
use std::time::Duration;

use blitzen_net::{ConnectError, NetError, PeerTls, Secret};
use blitzen_protocol::cluster::{FromObserver, Role, ToObserver};
use blitzen_protocol::status::{AutoscaleStatus, ClusterStatus, Failure};
use blitzen_protocol::{Capacity, SizeText};

/// Why a request got no answer.
#[derive(thiserror::Error)]
pub enum ObserveError {
    /// The server could not be reached, or refused us.
    #[error("cannot reach the server at {server}: {source}")]
    Connect {
        /// `host:port`.
        server: String,
        /// What went wrong.
        #[source]
        source: ConnectError,
    },
    /// The connection broke before the answer came.
    #[error("the server at {server} did not answer: {reason}")]
    NoAnswer {
        /// `host:port`.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error (an unknown session).
    #[error("{0}")]
    Refused(String),
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for ObserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Connects to `server` as an observer, sends `request` and returns the answer; an answer
/// that is an error comes back as [`ObserveError::Refused`]. Everything within `limit`.
pub async fn ask(
    server: &str,
    secret: Option<&Secret>,
    tls: &PeerTls,
    request: FromObserver,
    limit: Duration,
) -> Result<ToObserver, ObserveError> {
    let name = blitzen_common::cli::process_name("observer");
    let admitted = blitzen_net::connect(server, Role::Observer { name }, secret, tls, limit)
        .await
        .map_err(|source| ObserveError::Connect { server: server.to_string(), source })?;
    let (mut reader, write) = (admitted.reader, admitted.write);
    let (writer, written) = blitzen_net::spawn_writer::<FromObserver>(write);
    let no_answer = |reason: String| ObserveError::NoAnswer { server: server.to_string(), reason };
    writer.send(request).map_err(|_| no_answer("the connection closed".into()))?;
    let answer = tokio::time::timeout(limit, reader.next::<ToObserver>())
        .await
        .map_err(|_| no_answer(format!("no answer within {limit:?}")))?;
    // A clean end (TLS's close_notify): the server takes it for a goodbye, not an error.
    drop(writer);
    let _ = tokio::time::timeout(Duration::from_secs(1), written).await;
    match answer {
        Ok(Some(ToObserver::Error(message))) => Err(ObserveError::Refused(message)),
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(no_answer("the server closed the connection".into())),
        Err(NetError::Silent(limit)) => Err(no_answer(format!("nothing for {limit:?}"))),
        Err(e) => Err(no_answer(format!("bad frame: {e}"))),
    }
}

/// `1h 02m`, `3m 05s`, `4.2s`, `120ms`: a duration as a person reads it.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Rows as columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// What an agent's running tasks hold of what it has: `cpu 2/4, mem 1.0 GiB/16.0 GiB, gpu 1/2`.
fn resources_used(capacity: &Capacity, used: &Capacity) -> String {
    let mut parts = vec![
        format!("cpu {}/{}", used.cpus, capacity.cpus),
        format!("mem {}/{}", SizeText(used.memory), SizeText(capacity.memory)),
    ];
    for (name, count) in &capacity.custom {
        parts.push(format!("{name} {}/{count}", used.custom(name)));
    }
    parts.join(", ")
}

/// `reply` with only what concerns the tasks named `only` (a Rust task's name, a Python
/// function's `module.qualname`): the running tasks, failures and counts of that name, for
/// `status --task` and `failures --task`. Everything when `only` is `None`.
pub fn only_task(reply: ToObserver, only: Option<&str>) -> ToObserver {
    let Some(name) = only else { return reply };
    match reply {
        ToObserver::Status(mut status) => {
            status.recent_failures.retain(|f| f.task == name);
            for agent in &mut status.agents {
                for worker in &mut agent.worker_states {
                    worker.task = worker.task.take().filter(|t| t.task == name);
                }
            }
            status.tasks.retain(|t| t.task == name);
            ToObserver::Status(status)
        }
        ToObserver::Failures(mut failures) => {
            failures.retain(|f| f.task == name);
            ToObserver::Failures(failures)
        }
        reply => reply,
    }
}

/// A server's answer as the subcommands print it: one JSON value and a newline with `json`,
/// text for a person otherwise. The server's own error is an error here.
pub fn render(
    server: &str,
    reply: ToObserver,
    json: bool,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let to_json = |value: serde_json::Result<String>| value.map(|v| v + "\n");
    Ok(match reply {
        ToObserver::Status(status) if json => to_json(serde_json::to_string(&status))?,
        ToObserver::Status(status) => render_status(server, &status),
        ToObserver::Failures(failures) if json => to_json(serde_json::to_string(&failures))?,
        ToObserver::Failures(failures) if failures.is_empty() => {
            "no failed tasks in this session\n".to_string()
        }
        ToObserver::Failures(failures) => render_failures(&failures),
        ToObserver::Cancelled(report) if json => to_json(serde_json::to_string(&report))?,
        ToObserver::Cancelled(r) => format!(
            "cancelled {} queued tasks; {} running tasks are being stopped on their agents; \
             {} ids named no unfinished task\n",
            r.queued, r.running, r.not_found
        ),
        ToObserver::Resumed { .. } if json => to_json(serde_json::to_string(&reply))?,
        ToObserver::Resumed { was_paused: Some(why) } => {
            format!("autoscaling resumed; it had paused: {why}\n")
        }
        ToObserver::Resumed { was_paused: None } => {
            "autoscaling resumed (it was not paused; any back-off is over)\n".to_string()
        }
        ToObserver::Error(message) => return Err(message.into()),
    })
}

/// The cluster at a glance: the server's totals, one row per agent and per session, then the
/// most recent failures with their whole error.
pub fn render_status(server: &str, status: &ClusterStatus) -> String {
    let s = &status.server;
    let mut out = String::new();
    let storage = if s.durable { "state in a data directory" } else { "state in memory" };
    let _ = writeln!(
        out,
        "blitzen-server {} at {server}: up {}, {storage}",
        s.version,
        human_duration(s.uptime_ms)
    );
    let _ = writeln!(
        out,
        "tasks: {} queued, {} waiting on inputs, {} waiting at agents, {} running, {} finished \
         ({} failed, {} cancelled); {:.1}/s over the last minute; {} results not yet fetched",
        s.queued,
        s.waiting,
        s.prefetched,
        s.running,
        s.finished,
        s.failed,
        s.cancelled,
        s.throughput,
        s.results_held
    );
    if let Some(r) = &status.restart {
        let awaiting = if r.awaiting.is_empty() { "nobody".into() } else { r.awaiting.join(", ") };
        let _ = writeln!(
            out,
            "after a restart: {} restored tasks held until the agents connected before it \
             re-attach (waiting for {awaiting}); released in {} at the latest",
            r.held,
            human_duration(r.release_in_ms)
        );
    }
    if let Some(a) = &status.autoscale {
        out.push_str(&render_autoscale(a));
    }
    out.push('\n');
    if status.agents.is_empty() {
        out.push_str("no agents connected\n");
    } else {
        let rows: Vec<Vec<String>> = (status.agents.iter())
            .map(|a| {
                vec![
                    a.host.clone(),
                    a.workers.to_string(),
                    a.busy.to_string(),
                    a.held.to_string(),
                    a.done.to_string(),
                    a.failed.to_string(),
                    resources_used(&a.capacity, &a.used),
                    format!("{} ago", human_duration(a.last_heard_ms)),
                    human_duration(a.connected_for_ms),
                ]
            })
            .collect();
        let header = [
            "AGENT",
            "WORKERS",
            "BUSY",
            "HELD",
            "DONE",
            "FAILED",
            "RESOURCES USED",
            "LAST HEARD",
            "CONNECTED FOR",
        ];
        out.push_str(&table(&header, &rows));
    }
    out.push('\n');
    if status.sessions.is_empty() {
        out.push_str("no sessions\n");
    } else {
        let rows: Vec<Vec<String>> = (status.sessions.iter())
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.driver.clone(),
                    if d.connected { "connected" } else { "departed" }.to_string(),
                    d.submitted.to_string(),
                    d.queued.to_string(),
                    d.waiting.to_string(),
                    d.prefetched.to_string(),
                    d.running.to_string(),
                    d.done.to_string(),
                    d.failed.to_string(),
                    d.cancelled.to_string(),
                    format!("{:.1}/s", d.throughput),
                ]
            })
            .collect();
        let header = [
            "SESSION",
            "DRIVER",
            "STATE",
            "SUBMITTED",
            "QUEUED",
            "ON INPUTS",
            "AT AGENTS",
            "RUNNING",
            "DONE",
            "FAILED",
            "CANCELLED",
            "RATE",
        ];
        out.push_str(&table(&header, &rows));
    }
    if !status.recent_failures.is_empty() {
        out.push_str("\nrecent failures, most recent last:\n");
        out.push_str(&render_failures(&status.recent_failures));
    }
    out
}

/// The autoscaler's lines of the status: what it holds, and its last decision.
fn render_autoscale(a: &AutoscaleStatus) -> String {
    let mut out = String::new();
    let dry = if a.dry_run { " (dry run: nothing is submitted)" } else { "" };
    let _ = writeln!(
        out,
        "autoscaling on {}{dry}: {} pending, {} starting, {} busy, {} idle, {} draining, of at \
         most {} agents of {} workers; {} asked for in all",
        a.backend,
        a.pending,
        a.starting,
        a.busy,
        a.idle,
        a.draining,
        a.max_agents,
        a.agent_workers,
        a.submitted
    );
    if let Some(reason) = &a.paused {
        let _ = writeln!(
            out,
            "  PAUSED until `blitzen-server resume` (or the server restarts): {reason}"
        );
    } else if a.backoff_ms > 0 {
        let _ = writeln!(
            out,
            "  backing off {} after {} failed submissions",
            human_duration(a.backoff_ms),
            a.failed_submissions
        );
    }
    let _ = writeln!(
        out,
        "  last decision, {} ago: {}",
        human_duration(a.last_decision_ms),
        a.last_decision
    );
    out
}

/// Failures, each with its session, where it ran, and its whole error indented below.
pub fn render_failures(failures: &[Failure]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = String::new();
    for f in failures {
        let place = match (&f.host, f.pid) {
            (Some(host), Some(pid)) => format!(" on {host} (worker {pid})"),
            (None, Some(pid)) => format!(" on worker {pid}"),
            _ => String::new(),
        };
        let ago = human_duration(now.saturating_sub(f.at_unix_ms));
        let _ = writeln!(
            out,
            "- session {}, task {} `{}`{place}, {ago} ago: {}",
            f.session, f.id, f.task, f.kind
        );
        for line in f.error.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human_duration(120), "120ms");
        assert_eq!(human_duration(4_250), "4.2s");
        assert_eq!(human_duration(185_000), "3m 05s");
        assert_eq!(human_duration(3_725_000), "1h 02m");
    }

    #[test]
    fn a_table_pads_every_column_to_its_widest_cell() {
        let rows = vec![vec!["a-long-host".to_string(), "6".to_string()]];
        let text = table(&["AGENT", "WORKERS"], &rows);
        assert_eq!(text, "AGENT        WORKERS\na-long-host  6\n");
    }
}
