"""Per-worker setup: ``MulticoreDispatcher(initializer=, initargs=)`` and
``blitzen-py-client --initializer module:function``, run once in each worker before its first
task and again in a replacement; a failing one is a clear error, never a crash loop."""

import pytest

import blitzen
from blitzen import Lost, WorkerCrashed
from blitzen.distributed import DistributedDispatcher

from calls import flaky_setup, hard_exit, remember, setup_value
from conftest import free_port
from test_distributed import SECRET, start_client, start_server


def test_an_initializer_runs_once_per_worker_and_again_in_a_replacement(tmp_path):
    log = tmp_path / "initialized"
    with blitzen.MulticoreDispatcher(2, initializer=remember, initargs=(str(log), "model")) as d:
        first = set(log.read_text().split())
        assert len(first) == 2, "each worker ran it before saying it was ready"
        seen = d.get_results([d.run(setup_value, i) for i in range(20)])
        assert {value for _, value, _ in seen} == {"model"}
        assert {str(pid) for pid, _, _ in seen} <= first
        assert isinstance(d.get_results(d.run(hard_exit, 3)), WorkerCrashed)
        pids = d.worker_pids(timeout=30)  # the replacement is ready: it ran it first
        assert pids is not None and len(pids) == 2
        assert {str(pid) for pid in pids} <= set(log.read_text().split())
        assert len(set(log.read_text().split())) == 3, "the replacement ran it too"
        assert all(v == "model" for _, v, _ in d.get_results([d.run(setup_value, i) for i in range(4)]))


def test_an_initializer_that_raises_stops_the_constructor_with_its_traceback():
    with pytest.raises(Exception, match="no model here") as raised:
        blitzen.MulticoreDispatcher(2, initializer=flaky_setup, initargs=(__file__,))
    assert "Traceback" in str(raised.value) and "flaky_setup" in str(raised.value)
    with pytest.raises(TypeError, match="callable"):
        blitzen.MulticoreDispatcher(1, initializer="calls:remember")


def test_replacements_that_fail_alike_end_the_pool_not_loop(tmp_path):
    marker = tmp_path / "broken"
    with blitzen.MulticoreDispatcher(2, initializer=flaky_setup, initargs=(str(marker),)) as d:
        marker.write_text("from now on the initializer raises")
        crashed = d.get_results([d.run(hard_exit, 3), d.run(hard_exit, 3)])
        assert all(isinstance(c, WorkerCrashed) for c in crashed), crashed
        # Both replacements fail to start, and so do the next ones: the pool gives up.
        late = d.get_results(d.run(setup_value, 1), timeout=60)
        assert isinstance(late, Lost), late
        assert "failed to start" in late.message and "no model here" in late.message


def test_an_agents_initializer_runs_in_each_of_its_workers(processes, tmp_path):
    port = free_port()
    log = tmp_path / "agent-initialized"
    start_server(processes, port)
    start_client(
        processes,
        port,
        workers=2,
        args=["--initializer", "calls:setup_from_env"],
        env={"BLITZEN_TEST_SETUP_LOG": str(log)},
    )
    d = DistributedDispatcher("127.0.0.1", port, secret=SECRET, connect_timeout=10)
    try:
        seen = d.get_results([d.run(setup_value, i) for i in range(10)], timeout=60)
        assert {value for _, value, _ in seen} == {"agent"}
        assert len(set(log.read_text().split())) == 2
    finally:
        d.shutdown()


def test_the_agents_initializer_flag_is_checked():
    from blitzen.client import main

    with pytest.raises(SystemExit) as ended:
        main(["--initializer", "no-colon-here"])
    assert ended.value.code == 2


MAIN_SCRIPT = '''
import blitzen

MODEL = None

def load(name):
    global MODEL
    MODEL = f"weights of {name}"

def predict(x):
    return f"{MODEL}: {x}"

if __name__ == "__main__":
    with blitzen.MulticoreDispatcher(2, initializer=load, initargs=("a",)) as d:
        print(d.get_results([d.run(predict, i) for i in range(3)]))
    with blitzen.Executor(max_workers=2, initializer=load, initargs=("b",)) as ex:
        print(ex.submit(predict, 1).result(), list(ex.map(predict, [2, 3])))
'''


def test_tasks_of_a_script_see_what_its_initializer_set(tmp_path):
    """Functions of `__main__` travel by value, each with globals of its own: what the
    initializer sets with `global` still reaches the tasks, as with `multiprocessing.Pool`."""
    from conftest import run_script

    ran = run_script(MAIN_SCRIPT, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "['weights of a: 0', 'weights of a: 1', 'weights of a: 2']" in ran.stdout
    assert "weights of b: 1 ['weights of b: 2', 'weights of b: 3']" in ran.stdout
