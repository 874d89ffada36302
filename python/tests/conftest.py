"""Helpers of the pytest suite: scripts run as real processes, free ports, and clean-up that
stops every process a test started, even when the test fails."""

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"


def free_port():
    """A port that was free a moment ago, below the kernel's ephemeral range: a port the kernel
    hands out (to any test's outgoing connection) could be taken again before a server binds
    it."""
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768
    low = min(10_000, ephemeral_start - 1_000)
    for _ in range(1_000):
        port = random.randrange(low, ephemeral_start)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Processes a test started; all are killed (by pid, with their process group) at the end."""

    def __init__(self):
        self.started = []

    def start(self, args, cwd=None, env=None, **kwargs):
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            [sys.executable, *map(str, args)],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **kwargs,
        )
        self.started.append(p)
        return p

    def stop_all(self):
        for p in self.started:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def processes():
    ps = Processes()
    try:
        yield ps
    finally:
        ps.stop_all()


def wait_for_output(process, text, within=30.0):
    """Reads the process's stderr until it contains `text`; returns what was read. Fails if the
    process ends or `within` seconds pass first."""
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + within
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {text!r} on stderr within {within} s; got:\n{seen.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"the process ended before {text!r}; stderr:\n{seen.decode()}")
        seen += chunk
    return seen.decode()


def run_script(source, tmp_path, timeout=60, env=None):
    """Runs `source` as a script's `__main__` in a fresh interpreter; returns the process."""
    script = tmp_path / "script.py"
    script.write_text(source)
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
