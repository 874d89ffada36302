#!/usr/bin/env python3
"""W1-W4 of Blitzen's benchmark on the Python package — multicore, and distributed over
loopback (a server and an agent of its own, encrypted with a secret) — side by side with
Python's multiprocessing.Pool, in one run: each run of a workload goes to the three in turn,
in a rotating order. 2 workers (4 for W3), one call per task, as in `pool_baseline.py`.
`--executor`: the same through `blitzen.Executor` (`submit`, then each future's `result`),
side by side with `concurrent.futures.ProcessPoolExecutor`; and scikit-learn's `GridSearchCV`
under joblib's `"blitzen"` backend (a local pool of 2, a cluster of 2 agents of one worker)
side by side with joblib's default, loky (2 workers): GRID, 200 fits of a small model; GRIDX,
20 fits on a 32 MiB `X` (the array crosses to each worker once, not once per fit).

Prints one JSON line per workload and system in the schema of
`cargo run --release --bin bench -- --json`, then a table of the medians on stderr:

    pip install ./python
    python3 bench/python_bench.py --runs 5
"""

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

import pool_baseline as base
from pool_baseline import MIB, W1_TASKS, W2_TRIPS, W3_SLEEP, W3_TASKS, W4_TASKS, noop
from pool_baseline import Pool, latency, payload, scaling, throughput

import blitzen
from blitzen.distributed import DistributedDispatcher

SECRET = "python-bench-secret-on-loopback"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


class Blitzen:
    """A Blitzen dispatcher; results come back in the order of the ids."""

    def __init__(self, dispatcher):
        self.d = dispatcher
        self.d.get_results([self.d.run(noop, 0)])

    def submit(self, f, *args):
        return self.d.run(f, *args)

    def fetch(self, ids):
        return self.d.get_results(ids)

    def close(self):
        self.d.shutdown()


class Executor:
    """A ``blitzen.Executor``, or any ``concurrent.futures`` executor: futures' results in
    order."""

    def __init__(self, executor):
        self.ex = executor
        self.ex.submit(noop, 0).result()

    def submit(self, f, *args):
        return self.ex.submit(f, *args)

    def fetch(self, futures):
        return [f.result() for f in futures]

    def close(self):
        self.ex.shutdown()


    def joblib_config(self):
        """What `parallel_config` takes to run joblib's batches here."""
        return {"backend": "blitzen", "executor": self.ex, "n_jobs": -1}


class Loky:
    """joblib's default backend, its reusable executor of `workers` processes."""

    path = "joblib loky"

    def __init__(self, workers):
        self.workers = workers

    def joblib_config(self):
        return {"backend": "loky", "n_jobs": self.workers}

    def close(self):
        pass


class ExecutorMulticore(Executor):
    path = "Executor multicore"

    def __init__(self, workers):
        super().__init__(blitzen.Executor(max_workers=workers))


class ProcessPool(Executor):
    path = "ProcessPoolExecutor"

    def __init__(self, workers):
        import concurrent.futures

        super().__init__(concurrent.futures.ProcessPoolExecutor(workers))


class Multicore(Blitzen):
    path = "python multicore"

    def __init__(self, workers):
        super().__init__(blitzen.MulticoreDispatcher(workers=workers))


def wait_for(process, text, within=60):
    seen = b""
    deadline = time.monotonic() + within
    fd = process.stderr.fileno()
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no {text!r} within {within} s: {seen.decode()}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"the process ended before {text!r}: {seen.decode()}")
        seen += chunk


class Cluster:
    """A server and one agent of `workers` Python workers, each a process of its own."""

    def __init__(self, workers, agents=1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, BLITZEN_SECRET=SECRET, BLITZEN_PORT=str(port))
        start = lambda args: subprocess.Popen(
            [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.processes = []
        try:
            server = start(["-c", "import blitzen.distributed as d; d.DistributedDispatcher().spawn_server()"])
            self.processes.append(server)
            wait_for(server, "serving")
            for _ in range(agents):
                client = start(
                    ["-m", "blitzen.client", "--workers", str(workers), "--path", BENCH_DIR]
                )
                self.processes.append(client)
                wait_for(client, "connected")
            self.port = port
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stderr.close()


class Distributed(Blitzen):
    path = "python distributed"

    def __init__(self, workers):
        self.cluster = Cluster(workers)
        super().__init__(DistributedDispatcher("127.0.0.1", self.cluster.port, secret=SECRET))

    def close(self):
        super().close()
        self.cluster.stop()


class ExecutorDistributed(Executor):
    path = "Executor distributed"

    def __init__(self, workers):
        self.cluster = Cluster(workers)
        address = f"127.0.0.1:{self.cluster.port}"
        super().__init__(blitzen.Executor(server=address, secret=SECRET))

    def close(self):
        super().close()
        self.cluster.stop()


class ExecutorTwoAgents(ExecutorDistributed):
    """An Executor on a cluster of two agents of `workers // 2` workers each."""

    def __init__(self, workers):
        self.cluster = Cluster(max(workers // 2, 1), agents=2)
        address = f"127.0.0.1:{self.cluster.port}"
        Executor.__init__(self, blitzen.Executor(server=address, secret=SECRET))


KINDS = [Multicore, Distributed, Pool]
EXECUTORS = [ExecutorMulticore, ExecutorDistributed, ProcessPool]
SEARCHES = [ExecutorMulticore, ExecutorTwoAgents, Loky]


def grid_search(samples, features, model, grid):
    """A workload: `GridSearchCV(model, grid, cv=5, n_jobs=-1)` on a dataset of its own, run
    under a system's joblib backend; seconds per search."""
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=samples, n_features=features, random_state=0)

    def run(system):
        from joblib import parallel_config
        from sklearn.model_selection import GridSearchCV

        import blitzen.joblib  # noqa: F401  (registers the backend)

        with parallel_config(**system.joblib_config()):
            start = time.perf_counter()
            GridSearchCV(model, grid, cv=5).fit(X, y)
            return time.perf_counter() - start

    return run


def small_search():
    """GRID: 200 fits (40 settings, 5 folds) of a small model on a small dataset."""
    from sklearn.linear_model import ElasticNet

    grid = {"alpha": [0.01 * 2**i for i in range(20)], "l1_ratio": [0.2, 0.8]}
    return grid_search(1000, 20, ElasticNet(max_iter=2000), grid)


def large_search():
    """GRIDX: 20 fits (4 settings, 5 folds) on a 32 MiB `X`."""
    from sklearn.linear_model import Ridge

    return grid_search(40_000, 100, Ridge(), {"alpha": [0.1, 1.0, 10.0, 100.0]})


def measure(workload, runs, workers, kinds=KINDS):
    """Runs `workload` `runs` times on each system, rotating which goes first."""
    systems = []
    try:
        for kind in kinds:
            systems.append(kind(workers))
        results = {s.path: [] for s in systems}
        for r in range(runs):
            n = r % len(systems)
            for s in systems[n:] + systems[:n]:
                results[s.path].append(workload(s))
        return results
    finally:
        for s in systems:
            s.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per workload (default 5)")
    parser.add_argument(
        "--workload",
        default=None,
        help="among W1,W2,W3,W4 (and GRID,GRIDX with --executor); default: all of them",
    )
    parser.add_argument(
        "--executor",
        action="store_true",
        help="blitzen.Executor on both paths against concurrent.futures.ProcessPoolExecutor",
    )
    args = parser.parse_args()
    kinds = EXECUTORS if args.executor else KINDS
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    known = ["W1", "W2", "W3", "W4"] + (["GRID", "GRIDX"] if args.executor else [])
    chosen = [w.strip().upper() for w in (args.workload or ",".join(known)).split(",")]
    unknown = set(chosen) - set(known)
    if unknown:
        also = "" if args.executor else " (GRID and GRIDX need --executor)"
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}{also}")
    records = []
    for name in chosen:
        if name == "W1":
            for path, runs in measure(throughput, args.runs, 2, kinds).items():
                records.append(
                    (path, base.record("W1", {"tasks": W1_TASKS, "workers": 2}, runs, "tasks/s", "higher"))
                )
        elif name == "W2":
            for path, trips in measure(latency, args.runs, 2, kinds).items():
                p99 = {"p99_us": statistics.median_low([t[1] for t in trips])}
                params = {"round_trips": W2_TRIPS, "workers": 2}
                records.append(
                    (path, base.record("W2", params, [t[0] for t in trips], "µs p50", "lower", p99))
                )
        elif name == "W3":
            params = {"tasks": W3_TASKS, "sleep_s": W3_SLEEP, "ideal_s": 1.0, "workers": 4}
            for path, runs in measure(scaling, args.runs, 4, kinds).items():
                records.append((path, base.record("W3", params, runs, "s", "lower")))
        elif name in ("GRID", "GRIDX"):
            search = small_search() if name == "GRID" else large_search()
            params = {"fits": 200 if name == "GRID" else 20, "workers": 2}
            for path, runs in measure(search, args.runs, 2, SEARCHES).items():
                records.append((path, base.record(name, params, runs, "s", "lower")))
        else:
            params = {"tasks": W4_TASKS, "result_bytes": MIB, "workers": 2}
            for path, runs in measure(payload, args.runs, 2, kinds).items():
                records.append((path, base.record("W4", params, runs, "MB/s", "higher")))
    for path, record in records:
        record["path"] = path
        print(json.dumps(record, ensure_ascii=False))
    # The table: medians, and each Blitzen median as a multiple of the baseline's.
    print(f"{'workload':<10}{'multicore':>18}{'distributed':>18}{'baseline':>12}  units", file=sys.stderr)
    for name in chosen:
        row = {r["path"]: r for p, r in records if r["name"] == name}
        if name.startswith("GRID"):
            local, cluster, baseline = (k.path for k in SEARCHES)
        else:
            local, cluster, baseline = (k.path for k in kinds)
        pool = row[baseline]["median"]
        cells = []
        for path in (local, cluster):
            m = row[path]["median"]
            ratio = m / pool if row[path]["better"] == "higher" else pool / m
            cells.append(f"{m:g} ({ratio:.2f}×)")
        units = f"{row[baseline]['units']} (against {baseline})"
        print(f"{name:<10}{cells[0]:>18}{cells[1]:>18}{pool:>12g}  {units}", file=sys.stderr)


if __name__ == "__main__":
    main()
