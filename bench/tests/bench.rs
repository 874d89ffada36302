//! The benchmark program works: it runs workloads on both paths, prints well-formed JSON
//! lines whose figures are physically possible, compares with a baseline, and refuses bad
//! input. (What the figures are is the program's business, not this test's.)

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The benchmark program, built by `cargo test` with this test.
fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bench"))
}

fn run(args: &[&str]) -> Output {
    Command::new(bench()).args(args).output().expect("bench starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn json_lines_for_both_paths_with_possible_figures() {
    let out = run(&["--runs", "1", "--workload", "W3,W8", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let names: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (l["name"].as_str().unwrap_or("?").into(), l["path"].as_str().unwrap_or("?").into())
        })
        .collect();
    let expected =
        [("W3", "multicore"), ("W3", "distributed"), ("W8", "multicore"), ("W8", "distributed")];
    assert_eq!(names, expected.map(|(n, p)| (n.to_string(), p.to_string())));
    for l in &lines {
        let (median, min, max) = (l["median"].as_f64(), l["min"].as_f64(), l["max"].as_f64());
        let (Some(median), Some(min), Some(max)) = (median, min, max) else { panic!("{l}") };
        assert!(min <= median && median <= max, "{l}");
        assert!(l["units"].is_string() && l["params"].is_object(), "{l}");
        assert!(l["machine"]["cores"].as_u64().is_some_and(|c| c >= 1), "{l}");
        assert_eq!(l["runs"].as_array().map(Vec::len), Some(1), "{l}");
    }
    // 40 sleeps of 0.1 s on 4 workers cannot take less than a second.
    for w3 in &lines[..2] {
        let median = w3["median"].as_f64().unwrap_or(0.0);
        assert!((1.0..3.0).contains(&median), "{w3}");
    }
}

#[test]
fn baseline_ratios_appear_in_the_table() {
    let dir = std::env::temp_dir().join(format!("blitzen-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let baseline = dir.join("pool.jsonl");
    // A baseline that took 8 s for W3: ours (about 1 s) is about 8 times better.
    std::fs::write(&baseline, "{\"name\": \"W3\", \"median\": 8.0}\n").expect("baseline written");
    let out = run(&[
        "--runs",
        "1",
        "--workload",
        "W3",
        "--path",
        "multicore",
        "--baseline",
        baseline.to_str().expect("utf-8 path"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("W3")).expect("a W3 row");
    let ratio = row.split_whitespace().last().and_then(|r| r.strip_suffix('x'));
    let ratio: f64 = ratio.and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("{row}"));
    assert!((5.0..8.1).contains(&ratio), "{row}");
    assert!(table.contains("vs Pool"), "{table}");
}

/// W2 reports the machine's floor beside its own round trips: a round trip between two
/// processes that sleep in `read` takes at least a microsecond, and less than a second.
#[test]
fn w2_reports_the_process_round_trip_floor() {
    let out = run(&["--runs", "1", "--workload", "W2", "--path", "multicore", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).expect("one JSON line");
    let floor = line["extra"]["process_round_trip_floor_us"].as_f64().expect("a floor");
    assert!((1.0..1e6).contains(&floor), "{line}");
    let p50 = line["median"].as_f64().expect("a p50");
    assert!((1.0..1e6).contains(&p50), "{line}");
}

/// The async face's rows: W19 reports both p50s it compares, and W20 the cost of a pending
/// future, with the thread count unchanged while 100,000 are pending.
#[test]
fn w19_and_w20_report_the_async_figures() {
    let out = run(&["--runs", "1", "--workload", "W19,W20", "--path", "multicore", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (w19, w20) = (&lines[0], &lines[1]);
    for p50 in ["p50_us_awaited", "p50_us_blocking"] {
        let us = w19["extra"][p50].as_f64().expect("a p50");
        assert!((1.0..1e6).contains(&us), "{w19}");
    }
    let per_future = w20["median"].as_f64().expect("bytes per future");
    assert!((16.0..65536.0).contains(&per_future), "{w20}");
    assert_eq!(w20["extra"]["threads_before"], w20["extra"]["threads_while_pending"], "{w20}");
}

/// The graphs' rows on both paths, the tree and the shared input at a small size: the chain
/// reports its time per link and W2's p50 beside it, the tree both rates, the shared input
/// its times (shared, by value, taken without reading, a 1-byte input) and their ratio, and on
/// a cluster of four agents a copy at most sent to each.
#[test]
fn w21_and_w22_run_a_chain_and_a_tree() {
    let out = Command::new(bench())
        .args(["--runs", "1", "--workload", "W21,W22,W23", "--json"])
        .env("BLITZEN_BENCH_W22_LEVELS", "2")
        .env("BLITZEN_BENCH_W23_MIB", "1")
        .output()
        .expect("the bench runs");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for line in &lines {
        let figures: Vec<(&String, f64)> = line["extra"]
            .as_object()
            .expect("extra figures")
            .iter()
            .map(|(k, v)| (k, v.as_f64().expect("a number")))
            .collect();
        // A server's peak at 273 tasks may not rise above what the warm-up left it holding.
        let plausible = |(k, f): &(&String, f64)| {
            if k.starts_with("server_peak") { *f >= 0.0 } else { *f > 0.0 }
        };
        assert!(figures.len() >= 2 && figures.iter().all(plausible), "{line}");
        if line["name"] == "W23" {
            assert!(line["extra"]["s_taken_only"].is_f64(), "{line}");
            assert!(line["extra"]["x_one_byte"].is_f64(), "{line}");
        }
        if line["name"] == "W23" && line["path"] == "distributed" {
            let copies = line["extra"]["wide_sent_per_agent_copy"].as_f64().unwrap_or(-1.0);
            assert!(copies > 0.0 && copies <= 1.01, "at most one copy per agent: {line}");
        }
        if line["name"] == "W22" && line["path"] == "distributed" {
            assert!(line["extra"]["server_peak_b_per_task_tree"].is_f64(), "{line}");
        }
    }
    assert_eq!(lines[2]["params"]["tasks"], 273, "{}", lines[2]);
}

/// W24 at a small scale: an urgent task behind a queue starts within a few task durations
/// (not after the queue), and a low task under a stream of priority-2 tasks starts near its
/// documented bound of 2 s (not when the stream ends), on both paths.
#[test]
fn w24_an_urgent_task_passes_the_queue_and_a_low_one_the_stream() {
    let out = Command::new(bench())
        .args(["--runs", "1", "--workload", "W24", "--json"])
        .env("BLITZEN_BENCH_W24_QUEUED", "2000")
        .env("BLITZEN_BENCH_W24_STREAM_PRIORITY", "2")
        .output()
        .expect("the bench runs");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let urgent = line["extra"]["urgent_in_task_durations"].as_f64().unwrap_or(f64::MAX);
        assert!(urgent < 200.0, "behind 2,000 tasks of 10 ms on 2 workers: {line}");
        let low = line["extra"]["low_under_stream_s"].as_f64().unwrap_or(f64::MAX);
        assert!((1.0..4.0).contains(&low), "risen to the stream in about 2 s: {line}");
        assert_eq!(line["params"]["documented_bound_s"], 2.0, "{line}");
    }
}

/// W16 at a small scale: a driver process of its own submits, fetches and reports, and every
/// figure is there and plausible.
#[test]
fn w16_reports_rates_and_memory_per_task_at_both_sizes() {
    let out = Command::new(bench())
        .args(["--runs", "1", "--workload", "W16", "--json"])
        .env("BLITZEN_BENCH_W16_SIZES", "20000,40000")
        .output()
        .expect("the bench runs");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let line = text(&out.stdout);
    let record: Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(record["name"], "W16", "{record}");
    assert_eq!(record["params"]["tasks"], serde_json::json!([20000, 40000]), "{record}");
    let ratio = record["median"].as_f64().expect("a median");
    assert!(ratio > 0.0 && ratio.is_finite(), "{record}");
    for size in ["small", "large"] {
        let rate = record["extra"][format!("tasks_per_s_{size}")].as_f64().expect("a rate");
        assert!(rate > 100.0, "{record}");
        for process in ["driver", "server"] {
            let bytes = &record["extra"][format!("{process}_peak_b_per_task_{size}")];
            let bytes = bytes.as_f64().expect("bytes per task");
            assert!((0.0..1e6).contains(&bytes), "{record}");
        }
    }
}

/// W17 at a small scale: simulated agents in processes of their own answer 100 drivers, one
/// of them is killed, and every figure is there and plausible.
#[test]
fn w17_reports_rates_memory_latency_and_notice_with_many_agents() {
    let out = Command::new(bench())
        .args(["--runs", "1", "--workload", "W17", "--json"])
        .env("BLITZEN_BENCH_W17_SIZES", "2,150,20")
        .output()
        .expect("the bench runs");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let record: Value = serde_json::from_str(text(&out.stdout).trim()).expect("one JSON line");
    assert_eq!(record["name"], "W17", "{record}");
    assert_eq!(record["params"]["agents"], serde_json::json!([2, 150]), "{record}");
    let extra = &record["extra"];
    for (figure, range) in [
        ("tasks_per_s_few", 10.0..1e8),
        ("tasks_per_s_many", 10.0..1e8),
        // Serving costs CPU: a 0 would be a figure not measured.
        ("server_cpu_us_per_task", f64::MIN_POSITIVE..1e6),
        // So does holding connections.
        ("server_bytes_per_idle_agent", f64::MIN_POSITIVE..1e7),
        ("submit_to_assignment_p99_us", 0.0..6e7),
        ("notice_100_killed_ms", 0.0..6e4),
    ] {
        let value = extra[figure].as_f64().expect(figure);
        assert!(range.contains(&value), "{figure}: {record}");
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    let out = run(&["--workload", "W25"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`W25` is not a workload: use W1 … W24"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--runs", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = Command::new(bench())
        .args(["--runs", "1", "--workload", "W16"])
        .env("BLITZEN_BENCH_W16_SIZES", "ten,20")
        .output()
        .expect("the bench runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("BLITZEN_BENCH_W16_SIZES=`ten,20` is not `SMALL,LARGE`"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--baseline", "/nonexistent/pool.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the baseline"), "{}", text(&out.stderr));
}
