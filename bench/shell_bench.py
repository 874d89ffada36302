#!/usr/bin/env python3
"""W25: programs per item from the shell — `blitzen submit` on this machine's cores (the
command line's local default), GNU parallel (`parallel -j N`) and `xargs -P N`, side by side in
one run, each run rotating which goes first: 5,000 `true` commands, and `sha256sum` of 5,000
small files. A peer that is not installed is skipped with one line.

    cargo build --release -p blitzen-cli
    python3 bench/shell_bench.py --runs 5            # JSON lines on stdout, the table on stderr
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BLITZEN = os.path.join(HERE, "..", "target", "release", "blitzen")


def commands(workers, items, program, state):
    """Each system's command line for running `program` (a list, `{}` for the item) per item
    of the file `items`."""
    return {
        "blitzen": [BLITZEN, "submit", "--workers", str(workers), "--each-line", items, "--", *program],
        "GNU parallel": ["parallel", "-j", str(workers), "-a", items, *program],
        "xargs": ["xargs", "-P", str(workers), "-I", "{}", "-a", items, *program],
    }


def timed(line, env):
    start = time.perf_counter()
    done = subprocess.run(line, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{line[0]} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--items", type=int, default=5000, help="items per run (default 5000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes at once")
    args = parser.parse_args()
    if args.runs < 1 or args.items < 1 or args.workers < 1:
        parser.error("--runs, --items and --workers must be at least 1")
    if not os.path.exists(BLITZEN):
        parser.error(f"{BLITZEN} is missing: cargo build --release -p blitzen-cli")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BLITZEN_STATE_DIR=os.path.join(tmp, "state"))
        numbers = os.path.join(tmp, "numbers")
        with open(numbers, "w") as f:
            f.writelines(f"{i}\n" for i in range(1, args.items + 1))
        files = os.path.join(tmp, "files")
        os.mkdir(os.path.join(tmp, "data"))
        with open(files, "w") as f:
            for i in range(args.items):
                path = os.path.join(tmp, "data", f"f{i}")
                with open(path, "w") as data:
                    data.write(f"item {i}\n" * 16)
                f.write(path + "\n")
        workloads = {
            "true": (numbers, ["true", "{}"]),
            "sha256sum": (files, ["sha256sum", "{}"]),
        }
        records = []
        for name, (items, program) in workloads.items():
            systems = commands(args.workers, items, program, tmp)
            for missing in [s for s, line in systems.items() if shutil.which(line[0]) is None]:
                print(f"{missing} is not installed: left out", file=sys.stderr)
                del systems[missing]
            rates = {s: [] for s in systems}
            order = list(systems)
            for r in range(args.runs):
                for s in order[r % len(order):] + order[: r % len(order)]:
                    rates[s].append(args.items / timed(systems[s], env))
            for s, runs in rates.items():
                record = {
                    "name": "W25",
                    "path": s,
                    "params": {"program": name, "items": args.items, "workers": args.workers},
                    "median": round(statistics.median(runs), 1),
                    "min": round(min(runs), 1),
                    "max": round(max(runs), 1),
                    "units": "items/s",
                    "better": "higher",
                    "runs": [round(v, 1) for v in runs],
                }
                records.append(record)
                print(json.dumps(record))
        print(f"{'program':<12}{'system':<16}{'items/s':>10}  vs blitzen", file=sys.stderr)
        for record in records:
            mine = next(r for r in records if r["path"] == "blitzen" and r["params"] == record["params"])
            ratio = mine["median"] / record["median"]
            print(
                f"{record['params']['program']:<12}{record['path']:<16}{record['median']:>10g}  "
                f"blitzen {ratio:.2f} ×",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
