//! W21–W23: task graphs and shared inputs. W21 is a chain of 1,000 tasks, each taking the one before's result:
//! the time per link against W2's round trip, measured alternately on the same dispatcher. W22
//! is a reduction: leaves summed 16 at a time, level by level, all submitted at once, against
//! the same number of independent tasks (W1's kind). W23 gives one large input to many tasks,
//! shared (encoded once) against passed to each by value.

use std::cell::RefCell;
use std::time::Instant;

use blitzen::{Backend, Blob, Dispatcher, TaskId};
use serde_json::json;

use super::side_by_side::alternately;
use super::{Better, Measured, latency, median, noop, wait};
use crate::Result;

/// One more than its input.
#[blitzen::task]
fn inc(x: u64) -> u64 {
    x + 1
}

/// The sum of sixteen.
#[allow(clippy::too_many_arguments)]
#[blitzen::task]
fn sum16(
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    e: u64,
    f: u64,
    g: u64,
    h: u64,
    i: u64,
    j: u64,
    k: u64,
    l: u64,
    m: u64,
    n: u64,
    o: u64,
    p: u64,
) -> u64 {
    a + b + c + d + e + f + g + h + i + j + k + l + m + n + o + p
}

const W21_LINKS: u64 = 1_000;

/// W21: per-link time of a chain, as a multiple of W2's p50.
pub(super) fn chain<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let linked = || chain_once(d);
    let round_trip = || latency(d, 1).map(|m| m.runs[0]);
    let (links, trips) = alternately(runs, linked, round_trip)?;
    Ok(Measured {
        params: json!({ "links": W21_LINKS, "task": "inc(x) = x + 1, each taking the one before" }),
        runs: links.iter().zip(&trips).map(|(l, t)| l / t).collect(),
        units: "× W2 p50",
        better: Better::Lower,
        extra: vec![("us_per_link", median(&links)), ("w2_p50_us", median(&trips))],
    })
}

/// Submits the whole chain, waits for its end; µs per link.
fn chain_once<B: Backend>(d: &Dispatcher<B>) -> Result<f64> {
    let start = Instant::now();
    let mut last = d.run(noop, 0);
    for _ in 1..W21_LINKS {
        last = d.submit(inc, last).map_err(|e| e.to_string())?;
    }
    let end = wait(d, &[last])?;
    let per_link = start.elapsed().as_secs_f64() * 1e6 / W21_LINKS as f64;
    if end != [W21_LINKS - 1] {
        return Err(format!("W21: the chain ended at {end:?}"));
    }
    Ok(per_link)
}

/// Levels of W22's reduction above its leaves: 16⁴ = 65,536 leaves by default,
/// `BLITZEN_BENCH_W22_LEVELS=5` for 16⁵ = 1,048,576.
fn w22_levels() -> Result<u32> {
    match std::env::var("BLITZEN_BENCH_W22_LEVELS") {
        Ok(n) => match n.trim().parse() {
            Ok(levels @ 1..=6) => Ok(levels),
            _ => Err(format!("BLITZEN_BENCH_W22_LEVELS=`{n}` is not 1 … 6")),
        },
        Err(_) => Ok(4),
    }
}

/// W22: a reduction tree's rate against independent tasks, as a percentage.
pub(super) fn tree<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    tree_watching(d, runs, None)
}

/// [`tree`], and with `server` (its pid) that process's peak memory in each run above its
/// memory before the first, per task: every node of a tree is submitted at once, so each is
/// in flight at the peak.
fn tree_watching<B: Backend>(
    d: &Dispatcher<B>,
    runs: usize,
    server: Option<u32>,
) -> Result<Measured> {
    let levels = w22_levels()?;
    let leaves = 16u64.pow(levels);
    let nodes: u64 = (0..=levels).map(|l| 16u64.pow(l)).sum();
    let base = server.map(crate::usage::rss_bytes).transpose()?.unwrap_or(0) as f64;
    let (tree_peaks, flat_peaks) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    let watched = |peaks: &RefCell<Vec<f64>>, run: &dyn Fn() -> Result<f64>| -> Result<f64> {
        let Some(pid) = server else { return run() };
        crate::usage::reset_peak_rss(pid)?;
        let rate = run()?;
        let peak = crate::usage::peak_rss_bytes(pid)? as f64;
        peaks.borrow_mut().push((peak - base).max(0.0) / nodes as f64);
        Ok(rate)
    };
    let reduced = || watched(&tree_peaks, &|| tree_once(d, leaves, nodes));
    let independent = || watched(&flat_peaks, &|| independent_once(d, nodes));
    let (trees, flat) = alternately(runs, reduced, independent)?;
    let mut extra =
        vec![("tasks_per_s_tree", median(&trees)), ("tasks_per_s_independent", median(&flat))];
    if server.is_some() {
        extra.push(("server_peak_b_per_task_tree", median(&tree_peaks.borrow())));
        extra.push(("server_peak_b_per_task_independent", median(&flat_peaks.borrow())));
    }
    Ok(Measured {
        params: json!({ "leaves": leaves, "fan_in": 16, "tasks": nodes }),
        runs: trees.iter().zip(&flat).map(|(t, f)| 100.0 * t / f).collect(),
        units: "% of independent",
        better: Better::Higher,
        extra,
    })
}

/// W22 on a cluster of one agent (two workers), with the server's peak memory per task in
/// flight, each shape's apart.
pub(super) fn tree_on_cluster(runs: usize) -> Result<Measured> {
    let cluster = crate::procs::Cluster::start(1, 2)?;
    let d = cluster.dispatcher();
    super::warm_up(&d)?;
    let mut m = tree_watching(&d, runs, Some(cluster.server.pid()))?;
    m.params["agents"] = json!(1);
    m.params["workers_per_agent"] = json!(2);
    Ok(m)
}

/// Submits the leaves and every level at once (each node summing the sixteen below it), waits
/// for the root; tasks per second.
fn tree_once<B: Backend>(d: &Dispatcher<B>, leaves: u64, nodes: u64) -> Result<f64> {
    let start = Instant::now();
    let mut level: Vec<TaskId<u64>> = (0..leaves).map(|i| d.run(noop, i)).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len() / 16);
        for g in level.chunks_exact(16) {
            let inputs = (
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12],
                g[13], g[14], g[15],
            );
            next.push(d.submit(sum16, inputs).map_err(|e| e.to_string())?);
        }
        level = next;
    }
    let root = wait(d, &level)?;
    let rate = nodes as f64 / start.elapsed().as_secs_f64();
    if root != [leaves * (leaves - 1) / 2] {
        return Err(format!("W22: the tree summed to {root:?}"));
    }
    Ok(rate)
}

/// As many independent no-op tasks as the tree has; tasks per second.
fn independent_once<B: Backend>(d: &Dispatcher<B>, tasks: u64) -> Result<f64> {
    let start = Instant::now();
    let ids: Vec<_> = (0..tasks).map(|i| d.run(noop, i)).collect();
    let out = wait(d, &ids)?;
    let rate = tasks as f64 / start.elapsed().as_secs_f64();
    if out.len() as u64 != tasks {
        return Err("W22: results missing".into());
    }
    Ok(rate)
}

/// The length of an input, without reading it.
#[blitzen::task]
fn blob_len(data: Blob) -> u64 {
    data.len() as u64
}

/// The sum of an input's bytes, each taken as a number.
#[blitzen::task]
fn byte_sum(data: Blob) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum()
}

const W23_TASKS: u64 = 20;

/// W23's input: 100 MiB, or `BLITZEN_BENCH_W23_MIB` MiB.
fn w23_bytes() -> Result<usize> {
    match std::env::var("BLITZEN_BENCH_W23_MIB") {
        Ok(n) => match n.trim().parse::<usize>() {
            Ok(mib @ 1..=1024) => Ok(mib << 20),
            _ => Err(format!("BLITZEN_BENCH_W23_MIB=`{n}` is not 1 … 1024")),
        },
        Err(_) => Ok(100 << 20),
    }
}

/// W23: 20 tasks each reading one 100 MiB input: the time with the input shared (one handle
/// for every run, so a cluster's agents have it cached after the first), as a percentage of the
/// time with it passed to each task by value, alternately; and what taking the input costs:
/// 20 tasks that only look at its length, the shared input against a 1-byte one.
pub(super) fn shared<B: Backend>(d: &Dispatcher<B>, runs: usize) -> Result<Measured> {
    let bytes = w23_bytes()?;
    let input = Blob::from(vec![1u8; bytes]);
    let tiny = Blob::from(vec![1u8]);
    let handle = d.share(&input).map_err(|e| e.to_string())?;
    let timed = |input: Option<&Blob>, expected: u64, reads: bool| -> Result<f64> {
        let start = Instant::now();
        let ids: Vec<_> = match (input, reads) {
            (Some(input), true) => (0..W23_TASKS).map(|_| d.run(byte_sum, input.clone())).collect(),
            (Some(input), false) => {
                (0..W23_TASKS).map(|_| d.run(blob_len, input.clone())).collect()
            }
            (None, reads) => (0..W23_TASKS)
                .map(|_| match reads {
                    true => d.submit(byte_sum, &handle),
                    false => d.submit(blob_len, &handle),
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        let sums = wait(d, &ids)?;
        if sums.iter().any(|&s| s != expected) {
            return Err(format!("W23: sums {sums:?}"));
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let len = bytes as u64;
    let (shared, valued) =
        alternately(runs, || timed(None, len, true), || timed(Some(&input), len, true))?;
    let (taken, one_byte) =
        alternately(runs, || timed(None, len, false), || timed(Some(&tiny), 1, false))?;
    Ok(Measured {
        params: json!({ "tasks": W23_TASKS, "input_bytes": bytes, "type": "Blob" }),
        runs: shared.iter().zip(&valued).map(|(s, v)| 100.0 * s / v).collect(),
        units: "% of the time by value",
        better: Better::Lower,
        extra: vec![
            ("s_shared", median(&shared)),
            ("s_by_value", median(&valued)),
            ("s_taken_only", median(&taken)),
            ("s_one_byte", median(&one_byte)),
            ("x_one_byte", median(&taken) / median(&one_byte)),
        ],
    })
}

/// The length of an input, after 5 ms of work that does not read it.
#[blitzen::task]
fn blob_len_slowly(data: Blob) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(5));
    data.len() as u64
}

/// W23 wide: 400 tasks of 5 ms on four agents (a worker each) taking one shared input of twice
/// W23's size (200 MiB), against a 1-byte input, alternately, once every agent has it; and the
/// bytes of shared values the server sent, as a multiple of four copies.
pub(super) fn shared_wide(runs: usize) -> Result<Vec<(&'static str, f64)>> {
    const AGENTS: usize = 4;
    const TASKS: usize = 400;
    let bytes = 2 * w23_bytes()?;
    let cluster = crate::procs::Cluster::start(AGENTS, 1)?;
    let d = cluster.dispatcher();
    super::warm_up(&d)?;
    let input = Blob::from(vec![1u8; bytes]);
    let tiny = Blob::from(vec![1u8]);
    let handle = d.share(&input).map_err(|e| e.to_string())?;
    drop(input);
    let timed = |shared: bool| -> Result<f64> {
        let start = Instant::now();
        let ids: Vec<_> = match shared {
            true => (0..TASKS)
                .map(|_| d.submit(blob_len_slowly, &handle))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| e.to_string())?,
            false => (0..TASKS).map(|_| d.run(blob_len_slowly, tiny.clone())).collect(),
        };
        let lens = wait(&d, &ids)?;
        let expected = if shared { bytes as u64 } else { 1 };
        if lens.iter().any(|&n| n != expected) {
            return Err(format!("W23 wide: lengths {lens:?}"));
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let first = timed(true)?;
    let (taken, one_byte) = alternately(runs, || timed(true), || timed(false))?;
    let sent = cluster.status()?.server.shared_bytes_sent as f64;
    Ok(vec![
        ("wide_s_first", first),
        ("wide_x_one_byte", median(&taken) / median(&one_byte)),
        ("wide_sent_per_agent_copy", sent / (AGENTS as f64 * handle.encoded_len() as f64)),
    ])
}
