"""What calls ask for — CPUs, memory, counted resources — and what they get, on real Python
worker processes and on a cluster: they run only where it fits, a memory limit is enforced and
named (``MemoryExceeded``), and nonsense is a ``ValueError`` at the call."""

import pytest

import blitzen
from blitzen import Lost, MemoryExceeded, MulticoreDispatcher
from blitzen.distributed import DistributedDispatcher

from calls import hog, nap, span, square
from browser import Browser
from conftest import free_port
from test_distributed import SECRET, server_status, start_client, start_server, start_server_binary


def overlaps(spans):
    """The most spans running at once."""
    events = sorted([(b, 1) for _, b, _ in spans] + [(e, -1) for _, _, e in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_a_call_past_its_memory_limit_is_memory_exceeded_and_its_neighbours_finish():
    d = MulticoreDispatcher(workers=2)
    try:
        neighbours = [d.run(square, i) for i in range(10)]
        over = d.run(hog, 256, memory="64MiB")
        within = d.run(hog, 8, memory=64 << 20)
        unlimited = d.run(hog, 256)
        ended = d.get_results([over, within, unlimited])
        assert isinstance(ended[0], MemoryExceeded), ended[0]
        assert "went past its memory limit of 64.0 MiB" in str(ended[0])
        assert isinstance(ended[0], blitzen.TaskError)
        assert ended[1:] == [8 << 20, 256 << 20]
        assert d.get_results(neighbours) == [i * i for i in range(10)]
    finally:
        d.shutdown()


def test_calls_hold_what_they_ask_for_and_what_is_nowhere_is_lost():
    d = MulticoreDispatcher(workers=3, cpus=3, resources={"gpu": 1})
    try:
        gpu = [d.run(span, 0.1, resources={"gpu": 1}) for _ in range(4)]
        wide = [d.run(span, 0.1, cpus=3) for _ in range(2)]
        nowhere = d.run(square, 2, resources={"tpu": 1})
        assert overlaps(d.get_results(gpu)) == 1, "one GPU: one call at a time"
        assert overlaps(d.get_results(wide)) == 1, "each holds all three CPUs"
        lost = d.get_results(nowhere)
        assert isinstance(lost, Lost) and "tpu=1 of 0" in str(lost), lost
    finally:
        d.shutdown()


def test_nonsense_is_a_value_error_at_the_call():
    d = MulticoreDispatcher(workers=1)
    try:
        for kwargs, said in [
            ({"cpus": 0}, "cpus"),
            ({"memory": "4 gigs"}, "memory"),
            ({"memory": -5}, "memory"),
            ({"memory": 0}, "memory"),
            ({"resources": {"gpu": 0}}, "gpu"),
            ({"resources": {"no such": 1}}, "resource name"),
            ({"resources": ["gpu"]}, "dict"),
        ]:
            with pytest.raises(ValueError, match=said):
                d.run(square, 1, **kwargs)
        assert d.pending() == 0, "nothing was queued"
    finally:
        d.shutdown()
    with pytest.raises((ValueError, RuntimeError), match="0 CPUs"):
        MulticoreDispatcher(workers=1, cpus=0)


def test_on_a_cluster_calls_run_where_their_resources_are(processes):
    port = free_port()
    start_server(processes, port)
    start_client(processes, port, workers=2, args=["--resources", "gpu=1"])
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET, connect_timeout=10)
    try:
        gpu = [d.run(span, 0.1, resources={"gpu": 1}) for _ in range(3)]
        over = d.run(hog, 256, memory="64MiB")
        plain = [d.run(square, i) for i in range(5)]
        assert overlaps(d.get_results(gpu)) == 1
        exceeded = d.get_results(over)
        assert isinstance(exceeded, MemoryExceeded) and exceeded.host, exceeded
        assert d.get_results(plain) == [i * i for i in range(5)]
    finally:
        d.shutdown()


def test_a_call_is_known_by_its_function_not_as_python(processes):
    d = MulticoreDispatcher(workers=1)
    try:
        timed_out = d.get_results(d.run(nap, 5, timeout=0.2))
        assert "`calls.nap`" in str(timed_out), timed_out
    finally:
        d.shutdown()
    port = free_port()
    start_server(processes, port)
    start_client(processes, port, workers=1)
    c = DistributedDispatcher("127.0.0.1", port, secret=SECRET, connect_timeout=10)
    try:
        timed_out = c.get_results(c.run(nap, 5, timeout=0.2))
        assert "`calls.nap`" in str(timed_out) and "python" not in str(timed_out), timed_out
    finally:
        c.shutdown()


def test_a_failure_on_a_cluster_is_shown_by_its_function_in_the_status_and_on_the_dashboard(
    processes,
):
    port, dashboard = free_port(), f"127.0.0.1:{free_port()}"
    start_server_binary(processes, port, "--dashboard", dashboard)
    start_client(processes, port, workers=1)
    script = (
        "from blitzen.distributed import DistributedDispatcher\n"
        "def f2():\n"
        "    raise ValueError('Throwing error')\n"
        f"d = DistributedDispatcher('127.0.0.1', {port}, secret={SECRET!r}, connect_timeout=10)\n"
        "print(d.get_results(d.run(f2)))\n"
        "d.shutdown()\n"
    )
    driver = processes.start(["-c", script])
    assert driver.wait(timeout=60) == 0
    status = server_status(port, "--task", "__main__.f2")
    failures = status["recent_failures"]
    assert [f["task"] for f in failures] == ["__main__.f2"], failures
    assert "Throwing error" in failures[0]["error"]
    assert status["tasks"] == [{"task": "__main__.f2", "done": 0, "failed": 1, "cancelled": 0}]
    # The dashboard, in a real browser: the failure is shown by its function, with its error.
    browser = Browser()
    try:
        browser.open(f"http://{dashboard}/")
        listed = "return document.querySelector('#failures details.failure summary') !== null"
        assert browser.wait_for(listed), browser.eval("return document.body.innerText")
        summary = browser.text("#failures details.failure summary")
        assert "__main__.f2" in summary, summary
        assert "python" not in summary.split(), summary
        # The error is inside the closed <details>: its text, not what is visible.
        error = browser.eval("return document.querySelector('#failures details.failure pre').textContent")
        assert "Throwing error" in error, error
    finally:
        browser.close()
