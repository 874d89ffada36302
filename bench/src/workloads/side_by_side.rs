//! W12–W15: two clusters side by side, run alternately so that both see the same machine — one
//! encrypted and one in the clear (W12–W14), one with its dashboard followed and one without (W15).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use super::Better;
use super::{Measured, latency, mebibyte, median, payload_rate, throughput, warm_up};
use crate::Result;
use crate::procs::{Cluster, Security};

/// What W12–W14 compare.
#[derive(Debug, Clone, Copy)]
pub(super) enum Compare {
    /// W1's tasks/s.
    Throughput,
    /// W2's p50 round trip.
    Latency,
    /// W4's MB/s with `Blob` results.
    Payload,
}

/// W1, W2 or W4 on two clusters with the same secret, one encrypted (TLS 1.3, the default) and
/// one with encryption turned off, run alternately (each first in every other run) so that both
/// see the same machine. The
/// headline is encrypted as a percentage of plain (W12, W14) or the difference in µs (W13).
pub(super) fn encrypted_vs_plain(runs: usize, compare: Compare) -> Result<Measured> {
    let tls = Cluster::start_secured(1, 2, Security::Encrypted)?;
    let plain = Cluster::start_secured(1, 2, Security::Plaintext)?;
    let (dt, dp) = (tls.dispatcher(), plain.dispatcher());
    warm_up(&dt)?;
    warm_up(&dp)?;
    let measure = |d: &blitzen::distributed::DistributedDispatcher| -> Result<f64> {
        match compare {
            Compare::Throughput => throughput(d),
            Compare::Latency => latency(d, 1).map(|m| m.runs[0]),
            Compare::Payload => payload_rate(d, mebibyte),
        }
    };
    let (encrypted, clear) = alternately(runs, || measure(&dt), || measure(&dp))?;
    let headline = (encrypted.iter().zip(&clear))
        .map(|(e, p)| match compare {
            Compare::Latency => e - p,
            _ => 100.0 * e / p,
        })
        .collect();
    let (of, units, better, names) = match compare {
        Compare::Throughput => {
            ("W1", "% of plain", Better::Higher, ("tasks_per_s_encrypted", "tasks_per_s_plain"))
        }
        Compare::Latency => ("W2", "µs more", Better::Lower, ("p50_us_encrypted", "p50_us_plain")),
        Compare::Payload => {
            ("W4", "% of plain", Better::Higher, ("mb_per_s_encrypted", "mb_per_s_plain"))
        }
    };
    Ok(Measured {
        params: json!({ "workload": of, "agents": 1, "workers_per_agent": 2,
                        "encrypted": "TLS 1.3 (AES-GCM, X25519MLKEM768, aws-lc-rs)",
                        "against": "the same secret, --insecure-plaintext" }),
        runs: headline,
        units,
        better,
        extra: vec![(names.0, median(&encrypted)), (names.1, median(&clear))],
    })
}

/// Measures `a` and `b` `runs` times each, each going first in every other run so that
/// neither profits from going second; their figures, in run order.
pub(super) fn alternately(
    runs: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut of_a, mut of_b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        if run % 2 == 0 {
            of_a.push(a()?);
            of_b.push(b()?);
        } else {
            of_b.push(b()?);
            of_a.push(a()?);
        }
    }
    Ok((of_a, of_b))
}

/// Follows a dashboard's event stream like a browser would, until `stop`; returns the bytes
/// it read.
fn subscribe(addr: &str, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<u64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("dashboard: {e}"))?;
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .map_err(|e| format!("dashboard: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let (mut total, mut buf) = (0u64, vec![0u8; 64 * 1024]);
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        total
    }))
}

/// W1 on two clusters, one serving its dashboard with a client following its event stream,
/// one without, run alternately; the headline is the watched one's tasks/s as a percentage
/// of the other's.
pub(super) fn watched_vs_unwatched(runs: usize) -> Result<Measured> {
    let watched = Cluster::start_watched(1, 2)?;
    let plain = Cluster::start(1, 2)?;
    let (dw, dp) = (watched.dispatcher(), plain.dispatcher());
    warm_up(&dw)?;
    warm_up(&dp)?;
    let stop = Arc::new(AtomicBool::new(false));
    let dashboard = watched.dashboard.as_deref().ok_or("the server serves no dashboard")?;
    let follower = subscribe(dashboard, stop.clone())?;
    let (with, without) = alternately(runs, || throughput(&dw), || throughput(&dp))?;
    let headline = with.iter().zip(&without).map(|(w, p)| 100.0 * w / p).collect();
    stop.store(true, Ordering::Relaxed);
    let streamed = follower.join().map_err(|_| "the dashboard follower panicked")?;
    if streamed == 0 {
        return Err("the dashboard's event stream sent nothing".into());
    }
    Ok(Measured {
        params: json!({ "workload": "W1", "agents": 1, "workers_per_agent": 2,
                        "watched": "the server's dashboard, one client following /api/events" }),
        runs: headline,
        units: "% of unwatched",
        better: Better::Higher,
        extra: vec![
            ("tasks_per_s_watched", median(&with)),
            ("tasks_per_s_unwatched", median(&without)),
            ("event_stream_bytes", streamed as f64),
        ],
    })
}
