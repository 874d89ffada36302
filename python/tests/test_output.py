"""What tasks print, printed by the driver as they print it (``echo=True``): lines arrive
while the task still runs, on one machine and on a cluster, before the task's result is
returned; a flood is bounded and says so; ``echo=False`` prints nothing."""

import socket
import sys
import threading

from blitzen import MulticoreDispatcher
from blitzen.distributed import DistributedDispatcher

from blitzen import WorkerCrashed

from calls import flood, gated, last_words
from test_distributed import SECRET, start_client, start_server
from conftest import free_port


class Recorder:
    """A stand-in for ``sys.stdout``/``sys.stderr`` that tells when some text has arrived."""

    def __init__(self):
        self.text = ""
        self.changed = threading.Condition()

    def write(self, text):
        with self.changed:
            self.text += text
            self.changed.notify_all()
        return len(text)

    def flush(self):
        pass

    def wait_for(self, text, within=30):
        with self.changed:
            if not self.changed.wait_for(lambda: text in self.text, timeout=within):
                raise AssertionError(f"no {text!r} within {within} s; got {self.text!r}")


def record(monkeypatch):
    """Recorders in place of ``sys.stdout`` and ``sys.stderr``, set from the test itself:
    pytest sets its own capture again between a fixture's setup and the test."""
    out, err = Recorder(), Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


def gated_story(d, recorded):
    out, err = recorded
    with socket.socket() as gate:
        gate.bind(("127.0.0.1", 0))
        gate.listen()
        task_id = d.run(gated, gate.getsockname()[1])
        out.wait_for("Finished the first half on")
        err.wait_for("a warning before the gate")
        # Printed while the task waits at the gate: it has not ended.
        assert d.pending() == 1
        assert "after the gate" not in out.text
        conn, _ = gate.accept()
        with conn:
            conn.sendall(b"g")
            assert d.get_results(task_id, timeout=30) == 7
    # The last line is printed before the result is returned, and each line once.
    assert out.text.count("after the gate") == 1, out.text
    assert out.text.count("Finished the first half") == 1, out.text


def test_lines_are_printed_as_a_task_prints_them(monkeypatch):
    recorded = record(monkeypatch)
    with MulticoreDispatcher(workers=2) as d:
        gated_story(d, recorded)


def test_lines_cross_a_cluster_as_a_task_prints_them(processes, monkeypatch):
    recorded = record(monkeypatch)
    port = free_port()
    start_server(processes, port)
    start_client(processes, port)
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET, connect_timeout=10)
    try:
        gated_story(d, recorded)
    finally:
        d.shutdown()


def test_a_flood_is_bounded_and_the_rest_is_said_to_be_in_the_result(monkeypatch):
    out, err = record(monkeypatch)
    lines = 200_000
    with MulticoreDispatcher(workers=1) as d:
        assert d.get_results(d.run(flood, lines), timeout=60) == lines
    shown = out.text.count("\n")
    assert 0 < shown < lines, shown
    assert "lines of its output were not shown as they came" in err.text, err.text
    dropped = int(err.text.split(": ", 1)[1].split(" ", 1)[0])
    assert shown + dropped == lines, (shown, dropped)


def test_what_a_task_printed_just_before_its_worker_died_is_kept(monkeypatch):
    out, _ = record(monkeypatch)
    with MulticoreDispatcher(workers=2) as d:
        results = d.get_results([d.run(last_words, n) for n in range(10)], timeout=60)
    for n, r in enumerate(results):
        assert isinstance(r, WorkerCrashed), r
        assert r.stdout == f"last words {n}\n", (n, r.stdout)


def test_echo_false_prints_nothing(monkeypatch):
    out, err = record(monkeypatch)
    with MulticoreDispatcher(workers=1, echo=False) as d:
        assert d.get_results(d.run(flood, 3), timeout=30) == 3
    assert out.text == "" and err.text == ""
