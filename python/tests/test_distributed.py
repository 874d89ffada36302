"""DistributedDispatcher on a real cluster: a server and Python agents in their own processes,
over loopback, encrypted with a shared secret."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from blitzen import Cancelled, Lost, TaskFailed, TimedOut, WorkerCrashed
from blitzen.distributed import DistributedDispatcher

from calls import announced_nap, hard_exit, nap, span, square
from conftest import EXAMPLES, HERE, free_port, wait_for_output

SECRET = "a-cluster-secret-for-the-tests"


def server_binary():
    """The workspace's ``blitzen-server`` binary (python/tests/pytest.rs names it)."""
    server_bin = os.environ.get("BLITZEN_SERVER_BIN")
    assert server_bin, "BLITZEN_SERVER_BIN: the blitzen-server binary (python/tests/pytest.rs sets it)"
    return server_bin


def start_server_binary(processes, port, *args):
    """The workspace's ``blitzen-server`` on `port`, with the tests' secret and more flags."""
    server = subprocess.Popen(
        [server_binary(), "--port", str(port), *args],
        env={**os.environ, "BLITZEN_SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    processes.started.append(server)
    line = server.stdout.readline()
    assert str(port) in line, (line, server.stderr.read() if server.poll() is not None else "")
    return server


def server_status(port, *args):
    """``blitzen-server status --json`` of the binary server on `port`, parsed."""
    asked = subprocess.run(
        [server_binary(), "status", "--server", f"127.0.0.1:{port}", "--json", *args],
        env={**os.environ, "BLITZEN_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert asked.returncode == 0, asked.stderr
    return json.loads(asked.stdout)


def run_client_command(*args):
    """``python -m blitzen.client ARGS``, to its end: what it printed, and how it exited."""
    return subprocess.run(
        [sys.executable, "-m", "blitzen.client", *args], capture_output=True, text=True, timeout=30
    )


def fail(message):
    raise KeyError(message)


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def start_server(processes, port, secret=SECRET, extra_env=None):
    env = {"BLITZEN_PORT": str(port), "BLITZEN_SECRET": secret, **(extra_env or {})}
    server = processes.start(
        ["-c", "from blitzen.distributed import DistributedDispatcher as D; D().spawn_server()"],
        env=env,
    )
    wait_for_output(server, "serving")
    return server


def start_client(processes, port, workers=2, secret=SECRET, prelude="", args=(), env=None):
    """A Python agent; `prelude` runs before blitzen is imported; `args` are more flags;
    `env`, more of its environment."""
    env = {"BLITZEN_PORT": str(port), "BLITZEN_SECRET": secret, **(env or {})}
    flags = ["--workers", str(workers), "--path", str(HERE), *args]
    code = (
        f"{prelude}\n"
        "import sys\n"
        "from blitzen.client import main\n"
        f"sys.exit(main({flags!r}))\n"
    )
    client = processes.start(["-c", code], env=env)
    wait_for_output(client, "connected")
    return client


@pytest.fixture(scope="module")
def cluster():
    from conftest import Processes

    processes = Processes()
    try:
        port = free_port()
        server = start_server(processes, port)
        start_client(processes, port)
        # The server has the agent in its books (its status counts it), not only the agent
        # the server.
        wait_for_output(server, "agent connected")
        yield port
    finally:
        processes.stop_all()


@pytest.fixture
def driver(cluster):
    d = DistributedDispatcher("127.0.0.1", cluster, secret=SECRET, connect_timeout=10)
    try:
        yield d
    finally:
        d.shutdown()


def test_the_originals_three_scripts_run_unchanged(processes):
    folder = EXAMPLES / "distributed"
    env = {"BLITZEN_PORT": str(free_port()), "BLITZEN_SECRET": SECRET}
    server = processes.start([folder / "server.py"], cwd=folder, env=env)
    wait_for_output(server, "serving")
    client = processes.start([folder / "client.py"], cwd=folder, env=env)
    wait_for_output(client, "connected")
    driver = processes.start([folder / "driver.py"], cwd=folder, env=env)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "Requesting results.", out
    # Delays 5 to 9 with a 7 s timeout: 5 and 6 come back, 8 and 9 time out (7 is a toss-up).
    results = lines[1]
    assert results.startswith("[5, 6, "), results
    assert results.count("TimedOut(task_id=") >= 2, results
    # Both stop cleanly on SIGTERM, before the server's 30 s are up.
    for p in (client, server):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        assert p.returncode == 0, p.stderr.read()


def test_values_failures_and_where_they_ran(driver):
    ids = [driver.run(square, i) for i in range(50)]
    ids.append(driver.run(lambda: sum(range(10))))
    ids.append(driver.run(fail, "missing"))
    values = driver.get_results(ids)
    assert values[:51] == [i * i for i in range(50)] + [45]
    failed = values[51]
    assert isinstance(failed, TaskFailed) and isinstance(failed.exception, KeyError)
    assert failed.host, "a cluster failure names the agent's host"
    assert "KeyError: 'missing'" in failed.traceback


def test_crash_timeout_and_cancel_on_a_cluster(driver):
    crashed = driver.run(hard_exit, 9)
    timed_out = driver.run(nap, 30, timeout=0.5)
    # Cancelled once it is known to run: it tells a listening socket when it starts.
    with socket.create_server(("127.0.0.1", 0)) as starts:
        starts.settimeout(60)
        running = driver.run(announced_nap, starts.getsockname()[1], 60)
        told, _ = starts.accept()
        with told:
            assert told.recv(16) == b"started"
    driver.cancel(running)
    r_crashed, r_timed_out, r_running = driver.get_results([crashed, timed_out, running])
    assert isinstance(r_crashed, WorkerCrashed) and "code 9" in str(r_crashed)
    assert isinstance(r_timed_out, TimedOut)
    assert isinstance(r_running, Cancelled)
    # The agent is back to full strength: two naps run at once, on two workers.
    (pid_a, began_a, ended_a), (pid_b, began_b, ended_b) = driver.get_results(
        [driver.run(span, 1.0), driver.run(span, 1.0)]
    )
    assert pid_a != pid_b and began_a < ended_b and began_b < ended_a


def test_map_and_imap_unordered_on_a_cluster(driver):
    assert driver.map(square, range(20)) == [i * i for i in range(20)]
    assert sorted(driver.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]


def test_a_wrong_secret_never_runs_anything(cluster, tmp_path):
    marker = tmp_path / "ran"
    d = DistributedDispatcher(
        "127.0.0.1", cluster, secret="not-the-cluster-secret", connect_timeout=3
    )
    try:
        (result,) = d.get_results([d.run(touch, str(marker))], timeout=30)
    finally:
        d.shutdown()
    assert isinstance(result, Lost), result
    assert "secret" in str(result), result
    assert not marker.exists()


def test_an_unreachable_server_is_lost_with_the_reason():
    d = DistributedDispatcher("127.0.0.1", free_port(), secret=SECRET, connect_timeout=1)
    try:
        started = time.monotonic()
        (result,) = d.get_results([d.run(square, 3)], timeout=30)
    finally:
        d.shutdown()
    assert isinstance(result, Lost), result
    assert "127.0.0.1" in str(result)
    assert time.monotonic() - started < 15


def test_an_agent_with_other_versions_is_never_given_the_calls(processes):
    port = free_port()
    start_server(processes, port)
    start_client(processes, port, prelude="import cloudpickle; cloudpickle.__version__ = '0.0.0'")
    # With an unrunnable limit, the call ends Lost, saying which versions the agents have.
    impatient = DistributedDispatcher("127.0.0.1", port, secret=SECRET, unrunnable_limit=1)
    try:
        (result,) = impatient.get_results([impatient.run(square, 3)], timeout=30)
    finally:
        impatient.shutdown()
    assert isinstance(result, Lost), result
    assert "another signature" in str(result) and "cloudpickle 0.0.0" in str(result), result
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET)
    try:
        task_id = d.run(square, 3)
        with pytest.raises(TimeoutError) as waited:
            d.get_results([task_id], timeout=3)
        text = str(waited.value)
        assert "another signature" in text and "cloudpickle 0.0.0" in text, text
        # An agent with the same versions joins: the task runs there.
        start_client(processes, port)
        assert d.get_results([task_id], timeout=30) == [9]
    finally:
        d.shutdown()


class Warnings(logging.Handler):
    """The warnings Blitzen logs, with a way to wait for one."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []
        self.changed = threading.Condition()

    def emit(self, record):
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, *texts, within=20):
        def found():
            return next((m for m in self.messages if all(t in m for t in texts)), None)

        with self.changed:
            if not self.changed.wait_for(found, timeout=within):
                raise AssertionError(f"no warning with {texts} within {within} s: {self.messages}")
            return found()


def test_agents_with_other_versions_are_reported_at_connect_and_as_they_join(processes):
    port = free_port()
    start_server(processes, port)
    start_client(processes, port, prelude="import cloudpickle; cloudpickle.__version__ = '0.0.0'")
    warnings = Warnings()
    logger = logging.getLogger("blitzen")
    logger.addHandler(warnings)
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET)
    try:
        started = time.monotonic()
        task_id = d.run(square, 3)
        # At connect, long before any limit: the agent and its versions.
        told = warnings.wait_for("no connected agent has `python` as this driver does", "cloudpickle 0.0.0")
        assert time.monotonic() - started < 10
        import cloudpickle

        assert f"cloudpickle {cloudpickle.__version__}" in told, told
        # Another agent with other versions joins: told again, of both.
        start_client(processes, port, prelude="import cloudpickle; cloudpickle.__version__ = '0.0.1'")
        warnings.wait_for("cloudpickle 0.0.0", "cloudpickle 0.0.1")
        # One built alike joins: the call runs there.
        start_client(processes, port)
        assert d.get_results([task_id], timeout=30) == [9]
    finally:
        logger.removeHandler(warnings)
        d.shutdown()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="use at least 16"):
        DistributedDispatcher("127.0.0.1", 1, secret="short")
    with pytest.raises(ValueError, match="connect_timeout must be a number of seconds"):
        DistributedDispatcher("127.0.0.1", 1, secret=SECRET, connect_timeout=-1)
    with pytest.raises(ValueError, match="unrunnable_limit must be a number of seconds"):
        DistributedDispatcher("127.0.0.1", 1, secret=SECRET, unrunnable_limit=float("nan"))


def test_a_server_beyond_loopback_needs_a_secret(monkeypatch):
    monkeypatch.delenv("BLITZEN_SECRET", raising=False)
    d = DistributedDispatcher("0.0.0.0", free_port())
    with pytest.raises(RuntimeError, match="secret"):
        d.spawn_server(duration=1)


def test_the_client_command_documents_and_checks_its_flags(tmp_path):
    import subprocess

    run = run_client_command
    shown = run("--help")
    assert shown.returncode == 0
    for flag in (
        "--server",
        "--port",
        "--workers",
        "--secret-file",
        "--path",
        "--insecure-plaintext",
        "--give-up-after",
        "--server-file",
        "--idle-timeout",
        "--time-limit",
        "--allocation",
    ):
        assert flag in shown.stdout, flag
    bad = run("--workers", "0")
    assert bad.returncode == 2 and "--workers must be at least 1" in bad.stderr
    missing = run("--secret-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot read the secret file" in missing.stderr
    (tmp_path / "empty").write_text("\n")
    empty = run("--secret-file", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "secret file" in empty.stderr and "is empty" in empty.stderr


def test_an_agent_started_on_demand_finds_the_server_by_its_file_and_leaves_when_idle(
    processes, tmp_path
):
    """What `blitzen-server --autoscale` starts with `--agent-program blitzen-py-client`: the
    address from the server's file, the job's name in the status, and an exit once idle."""
    port, address = free_port(), tmp_path / "server.address"
    start_server_binary(processes, port, "--address-file", str(address))
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET)
    try:
        # Submitted first: an agent that started first could leave before it comes.
        task_id = d.run(square, 3)
        flags = ("--server-file", str(address), "--idle-timeout", "3", "--allocation", "77")
        # The port the dispatcher would use is not the server's: the file wins.
        client = start_client(processes, free_port(), workers=1, args=flags)
        assert d.get_results([task_id], timeout=60) == [9]
        agents = server_status(port)["agents"]
        assert [a["allocation"] for a in agents] == ["77"], agents
    finally:
        d.shutdown()
    assert client.wait(timeout=30) == 0
    log = client.stderr.read()
    assert "left the cluster" in log and "idle timeout" in log, log
    bad = run_client_command("--idle-timeout", "0")
    assert bad.returncode == 2 and "--idle-timeout must be a number of seconds > 0" in bad.stderr


def test_an_agent_told_to_give_up_stops_once_its_server_is_gone(processes):
    port = free_port()
    server = start_server(processes, port)
    client = start_client(processes, port, workers=1, args=("--give-up-after", "1"))
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    # Attempts are at most 5 s apart: it stops within the give-up time and one attempt.
    assert client.wait(timeout=30) == 0
    log = client.stderr.read()
    assert "server not reachable" in log and "give_up_after=1s" in log
    assert "has not been reachable for the give-up time: stopping" in log
    bad = run_client_command("--give-up-after", "-1")
    assert bad.returncode == 2 and "--give-up-after must be" in bad.stderr


def test_a_result_stands_for_an_argument_on_a_cluster(driver):
    from test_multicore import _pipeline

    _pipeline(driver)
