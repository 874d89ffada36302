#!/usr/bin/env python3
"""W1-W4 of Blitzen's benchmark on Python's multiprocessing.Pool, the baseline every Python user
knows. Standard library only; 2 workers (4 for W3), one apply_async per task. Prints one JSON
line per workload in the schema of `cargo run --release --bin bench -- --json`, so that

    python3 bench/pool_baseline.py > pool.jsonl
    cargo run --release --bin bench -- --baseline pool.jsonl

shows our figures as multiples of these.
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time

W1_TASKS = 100_000
W2_TRIPS = 2_000
W3_TASKS = 40
W3_SLEEP = 0.1
W4_TASKS = 200
MIB = 1 << 20


def noop(x):
    return x


def mebibyte(seed):
    return bytes([seed % 256]) * MIB


class Pool:
    """multiprocessing.Pool behind the two calls every workload makes: `submit` one call,
    `fetch` the results of several in order (`python_bench.py` runs the same workloads on
    Blitzen's Python package through the same two)."""

    path = "multiprocessing.Pool"

    def __init__(self, workers):
        self.pool = multiprocessing.Pool(workers)
        self.pool.apply_async(noop, (0,)).get()  # workers up

    def submit(self, f, *args):
        return self.pool.apply_async(f, args)

    def fetch(self, handles):
        return [h.get() for h in handles]

    def close(self):
        self.pool.close()
        self.pool.join()


def throughput(system):
    start = time.perf_counter()
    out = system.fetch([system.submit(noop, i) for i in range(W1_TASKS)])
    rate = W1_TASKS / (time.perf_counter() - start)
    assert out == list(range(W1_TASKS))
    return rate


def latency(system):
    trips = []
    for i in range(W2_TRIPS):
        start = time.perf_counter()
        system.fetch([system.submit(noop, i)])
        trips.append((time.perf_counter() - start) * 1e6)
    trips.sort()
    nearest = lambda q: trips[max(1, min(len(trips), int(-(-q * len(trips) // 1)))) - 1]
    return nearest(0.50), nearest(0.99)


def scaling(system):
    start = time.perf_counter()
    system.fetch([system.submit(time.sleep, W3_SLEEP) for _ in range(W3_TASKS)])
    return time.perf_counter() - start


def payload(system):
    start = time.perf_counter()
    total = sum(len(v) for v in system.fetch([system.submit(mebibyte, i) for i in range(W4_TASKS)]))
    assert total == W4_TASKS * MIB
    return total / (time.perf_counter() - start) / 1e6


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "kernel": platform.release(), "cpu": cpu}


def record(name, params, runs, units, better, extra=None):
    rounded = lambda v: float(f"{v:.4g}")
    return {
        "name": name,
        "path": "multiprocessing.Pool",
        "params": params,
        "median": rounded(statistics.median_low(runs)),
        "min": rounded(min(runs)),
        "max": rounded(max(runs)),
        "units": units,
        "better": better,
        "runs": [rounded(v) for v in runs],
        "extra": {k: rounded(v) for k, v in (extra or {}).items()},
        "machine": machine(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per workload (default 5)")
    parser.add_argument(
        "--workload",
        default="W1,W2,W3,W4",
        help="comma-separated workloads among W1,W2,W3,W4 (default: all four)",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = {w.strip().upper() for w in args.workload.split(",")}
    unknown = chosen - {"W1", "W2", "W3", "W4"}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    out = []
    pool = Pool(2)
    try:
        if "W1" in chosen:
            runs = [throughput(pool) for _ in range(args.runs)]
            out.append(record("W1", {"tasks": W1_TASKS, "workers": 2}, runs, "tasks/s", "higher"))
        if "W2" in chosen:
            trips = [latency(pool) for _ in range(args.runs)]
            out.append(
                record(
                    "W2",
                    {"round_trips": W2_TRIPS, "workers": 2},
                    [p50 for p50, _ in trips],
                    "µs p50",
                    "lower",
                    {"p99_us": statistics.median_low([p99 for _, p99 in trips])},
                )
            )
        if "W4" in chosen:
            runs = [payload(pool) for _ in range(args.runs)]
            params = {"tasks": W4_TASKS, "result_bytes": MIB, "workers": 2}
            w4 = record("W4", params, runs, "MB/s", "higher")
    finally:
        pool.close()
    if "W3" in chosen:
        pool = Pool(4)
        try:
            runs = [scaling(pool) for _ in range(args.runs)]
        finally:
            pool.close()
        params = {"tasks": W3_TASKS, "sleep_s": W3_SLEEP, "ideal_s": 1.0, "workers": 4}
        out.append(record("W3", params, runs, "s", "lower"))
    if "W4" in chosen:
        out.append(w4)
    for line in out:
        print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    main()
