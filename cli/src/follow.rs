//! Following a session from any shell: `wait` (collects its results), `status`, `output`,
//! `failures` and `cancel` (asked of the server as an observer, as `blitzen-server status`
//! does, so they disturb nothing).

use std::process::ExitCode;
use std::time::Duration;

use blitzen_protocol::cluster::{FromObserver, ToObserver};

use crate::args::{Cluster, Follow, Output};
use crate::run::{collect, secret};
use crate::session::Record;

/// The session's record, with the server `cluster` names instead if it names one.
fn record_of(session: &str, cluster: &Cluster) -> Result<Record, String> {
    let mut record = Record::load(session)?;
    if let Some(server) = &cluster.server {
        record.server = server.clone();
        record.local = false;
    }
    Ok(record)
}

/// Asks the session's server `request`, as an observer.
fn ask(record: &Record, cluster: &Cluster, request: FromObserver) -> Result<ToObserver, String> {
    let secret = secret(cluster)?;
    let tls = blitzen_net::PeerTls::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let asked = blitzen_server::observe::ask(
        &record.server,
        secret.as_ref(),
        &tls,
        request,
        Duration::from_secs(10),
    );
    runtime.block_on(asked).map_err(|e| e.to_string())
}

/// `blitzen wait`: collects every result not collected yet.
pub fn wait(follow: Follow) -> Result<ExitCode, String> {
    let record = record_of(&follow.session, &follow.cluster)?;
    if record.local {
        return summary(&record, follow.cluster.json);
    }
    let d = crate::run::dispatcher(&follow.cluster, &record.server)?.with_session(&record.session);
    let d = d.attached().map_err(|e| e.to_string())?;
    let code = collect(&d, &record, follow.cluster.json);
    d.shutdown();
    code
}

/// What was collected of a session whose cluster is gone (one started for its run).
fn summary(record: &Record, json: bool) -> Result<ExitCode, String> {
    let ended = record.ended()?;
    let failed = ended.values().filter(|e| e.error.is_some()).count();
    let total = record.ids.len();
    if json {
        println!(
            "{}",
            serde_json::json!({ "session": record.session, "tasks": total, "done": ended.len(), "failed": failed })
        );
    } else {
        eprintln!("{}/{total} done, {failed} failed", ended.len());
    }
    Ok(if failed > 0 || ended.len() < total { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `blitzen status`.
pub fn status(follow: Follow) -> Result<ExitCode, String> {
    let record = record_of(&follow.session, &follow.cluster)?;
    let ended = record.ended()?;
    let collected = ended.len() as u64;
    let failed_here = ended.values().filter(|e| e.error.is_some()).count() as u64;
    let total = record.ids.len() as u64;
    // The server's counts while it has the session; what was collected here otherwise.
    let live = if record.local && collected == total {
        None
    } else {
        match ask(&record, &follow.cluster, FromObserver::Status) {
            Ok(ToObserver::Status(status)) => {
                status.sessions.into_iter().find(|s| s.name == record.session)
            }
            Ok(_) => None,
            // Every result is here: a server that is gone has nothing more to say.
            Err(_) if collected == total => None,
            Err(e) => return Err(e),
        }
    };
    let (done, failed, running, queued) = match &live {
        Some(s) => (
            (s.done + s.failed + s.cancelled).max(collected),
            s.failed.max(failed_here),
            s.running + s.prefetched,
            s.queued + s.waiting,
        ),
        None => (collected, failed_here, 0, total.saturating_sub(collected)),
    };
    if follow.cluster.json {
        let said = serde_json::json!({
            "session": record.session, "tasks": total, "done": done, "failed": failed,
            "running": running, "queued": queued, "collected": collected,
        });
        println!("{said}");
    } else {
        println!(
            "{}: {done}/{total} done, {failed} failed, {running} running, {queued} queued",
            record.session
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `blitzen output`.
pub fn output(args: Output) -> Result<ExitCode, String> {
    let record = record_of(&args.session, &args.cluster)?;
    if record.place(args.item).is_none() {
        return Err(format!(
            "session {} has no item {} (its items are {})",
            record.session,
            args.item,
            span(&record)
        ));
    }
    let ended = record.ended()?;
    let Some(one) = ended.get(&args.item) else {
        return Err(format!(
            "item {} has not been collected: run `blitzen wait {}` (it collects every result)",
            args.item, record.session
        ));
    };
    if args.cluster.json {
        println!("{}", serde_json::to_string(one).map_err(|e| e.to_string())?);
    } else {
        print!("{}", one.stdout);
        eprint!("{}", one.stderr);
    }
    Ok(if one.error.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn span(record: &Record) -> String {
    match (record.numbers.first(), record.numbers.last()) {
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => "none".into(),
    }
}

/// `blitzen failures`: the items that failed, collected here or reported by the server.
pub fn failures(follow: Follow) -> Result<ExitCode, String> {
    let record = record_of(&follow.session, &follow.cluster)?;
    let mut failed: std::collections::BTreeMap<u64, String> =
        (record.ended()?.into_values()).filter_map(|e| Some((e.item, e.error?))).collect();
    // The server's, of what was not collected here (none when its cluster is gone).
    let asked = FromObserver::Failures { session: record.session.clone() };
    if !record.local
        && let Ok(ToObserver::Failures(reported)) = ask(&record, &follow.cluster, asked)
    {
        let place_of: std::collections::HashMap<u64, usize> =
            record.ids.iter().enumerate().map(|(i, id)| (id.seq(), i)).collect();
        for f in reported {
            if let Some(&place) = place_of.get(&f.id) {
                failed.entry(record.numbers[place]).or_insert(f.error);
            }
        }
    }
    if follow.cluster.json {
        let list: Vec<_> = failed
            .iter()
            .map(|(item, error)| serde_json::json!({ "item": item, "error": error }))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for (item, error) in &failed {
            println!("{item}: {}", error.lines().next().unwrap_or_default());
        }
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `blitzen cancel`.
pub fn cancel(follow: Follow) -> Result<ExitCode, String> {
    let record = record_of(&follow.session, &follow.cluster)?;
    let request = FromObserver::Cancel { session: record.session.clone(), ids: Vec::new() };
    match ask(&record, &follow.cluster, request)? {
        ToObserver::Cancelled(report) => {
            if follow.cluster.json {
                println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "{}: {} queued and {} running tasks cancelled",
                    record.session, report.queued, report.running
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err("the server answered the cancel with something else".into()),
    }
}
