"""``blitzen-py-client`` (also ``python -m blitzen.client``): an agent that serves a cluster's
Python tasks with Python worker processes, from the shell. The original's ``client.py``
script, ``spawn_client(workers=6)``, does the same from Python."""

import argparse
import os
import sys

from blitzen.distributed import DistributedDispatcher


def main(argv=None):
    """``blitzen-py-client``: an agent running Python workers, from the shell."""
    parser = argparse.ArgumentParser(
        prog="blitzen-py-client",
        description="Serve a Blitzen cluster's Python tasks with Python worker processes.",
    )
    parser.add_argument("--server", default="127.0.0.1", help="the server's address")
    parser.add_argument(
        "--port", type=int, default=None, help="the server's port (BLITZEN_PORT, else 7464)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes"
    )
    parser.add_argument(
        "--cpus", type=int, default=None, help="CPUs the running tasks may hold (default: --workers)"
    )
    parser.add_argument(
        "--memory", default=None, help="memory the running tasks may hold, e.g. 16GiB (default: the machine's)"
    )
    parser.add_argument(
        "--resources",
        default=None,
        metavar="NAME=N,...",
        help="counted resources this machine offers, e.g. gpu=2,license=1",
    )
    parser.add_argument(
        "--secret-file", help="file holding the cluster's secret (else BLITZEN_SECRET)"
    )
    parser.add_argument(
        "--path",
        action="append",
        default=[],
        help="a folder the workers import the drivers' modules from (repeatable)",
    )
    parser.add_argument(
        "--insecure-plaintext", action="store_true", help="do not encrypt (needs a secret)"
    )
    parser.add_argument(
        "--initializer",
        metavar="MODULE:FUNCTION",
        help="a function each worker runs once before its first task (again in a worker that "
        "replaces one), imported from MODULE: to load a model or open a database once",
    )
    parser.add_argument(
        "--give-up-after",
        type=float,
        metavar="SECS",
        default=None,
        help="stop once the server has not been reachable for SECS seconds (since the start, "
        "or since the connection was lost); default: wait for it and follow its restarts",
    )
    parser.add_argument(
        "--server-file",
        metavar="PATH",
        help="read the server's address (and certificate fingerprint) from the file "
        "blitzen-server --address-file writes, before each attempt to connect",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECS",
        help="leave the cluster, and exit, once no task was held for SECS seconds",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECS",
        help="leave SECS seconds after starting; the server sends no task expected to outlast it",
    )
    parser.add_argument(
        "--allocation",
        metavar="ID",
        help="the scheduler's name for the job this agent runs in (default: SLURM_JOB_ID)",
    )
    args = parser.parse_args(argv)
    if args.give_up_after is not None and not args.give_up_after >= 0:
        parser.error("--give-up-after must be a number of seconds ≥ 0")
    for flag, value in (("--idle-timeout", args.idle_timeout), ("--time-limit", args.time_limit)):
        if value is not None and not value > 0:
            parser.error(f"{flag} must be a number of seconds > 0")
    if args.initializer is not None:
        module, sep, function = args.initializer.partition(":")
        if not (sep and module and function.isidentifier()):
            parser.error(f"--initializer: `{args.initializer}` is not MODULE:FUNCTION")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.cpus is not None and args.cpus < 1:
        parser.error("--cpus must be at least 1")
    resources = None
    if args.resources:
        resources = {}
        for part in filter(None, (p.strip() for p in args.resources.split(","))):
            name, sep, count = part.partition("=")
            if not sep or not count.strip().isdigit() or int(count) < 1:
                parser.error(f"--resources: `{part}` is not NAME=COUNT with COUNT at least 1")
            resources[name.strip()] = int(count)
    secret = None
    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as f:
                secret = f.read()
        except OSError as e:
            parser.error(f"cannot read the secret file: {e}")
        if not secret.strip():
            parser.error(f"the secret file {args.secret_file} is empty")
    sys.path[:0] = [os.path.abspath(p) for p in args.path] + [os.getcwd()]
    dispatcher = DistributedDispatcher(
        args.server, args.port, secret=secret, plaintext=args.insecure_plaintext
    )
    try:
        dispatcher.spawn_client(
            args.workers,
            cpus=args.cpus,
            memory=args.memory,
            resources=resources,
            initializer=args.initializer,
            give_up_after=args.give_up_after,
            idle_timeout=args.idle_timeout,
            time_limit=args.time_limit,
            allocation=args.allocation,
            server_file=args.server_file,
        )
    except (RuntimeError, ValueError) as e:
        print(f"blitzen-py-client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
