"""``blitzen.Executor`` against the ``concurrent.futures`` documentation, point by point, on a
local pool and on a real cluster (a server and a Python agent in processes of their own)."""

import asyncio
import concurrent.futures as cf
import socket
import threading
import time

import pytest

import blitzen
from blitzen import DependencyFailed, WorkerCrashed

from calls import announced_nap, broken_setup, hard_exit, nap, remember, setup_value, square
from test_distributed import SECRET, cluster  # noqa: F401  (the module's cluster: its port)


@pytest.fixture(params=["local", "cluster"])
def where(request):
    """How to make an executor: on a local pool of two workers, or on the cluster."""
    if request.param == "local":
        return lambda **kw: blitzen.Executor(max_workers=2, **kw)
    port = request.getfixturevalue("cluster")
    return lambda **kw: blitzen.Executor(server=f"127.0.0.1:{port}", secret=SECRET, **kw)


def fails(message):
    raise KeyError(message)


def started(listener):
    """Waits until a task told `listener` it started."""
    told, _ = listener.accept()
    with told:
        assert told.recv(16) == b"started"


def test_results_and_the_tasks_own_exceptions(where):
    with where() as ex:
        futures = [ex.submit(square, i) for i in range(50)]
        assert all(isinstance(f, cf.Future) for f in futures)
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(50)]
        failed = ex.submit(fails, "missing")
        with pytest.raises(KeyError, match="missing") as raised:
            failed.result(timeout=60)
        # The worker's traceback is the cause, as ProcessPoolExecutor shows it.
        assert "KeyError: 'missing'" in str(raised.value.__cause__)
        assert isinstance(failed.exception(), KeyError)
        crashed = ex.submit(hard_exit, 9)
        assert isinstance(crashed.exception(timeout=60), WorkerCrashed)
        assert ex.submit(square, 3).result(timeout=60) == 9, "the worker was replaced"
        assert ex._max_workers >= 1


def test_an_executor_on_a_cluster_counts_its_agents_workers(cluster):
    from blitzen.distributed import DistributedDispatcher

    assert DistributedDispatcher("127.0.0.1", cluster, secret=SECRET).cluster_workers() == 2
    with blitzen.Executor(server=f"127.0.0.1:{cluster}", secret=SECRET) as ex:
        assert ex._max_workers == 2, "the one agent's two workers"
    with blitzen.Executor(3, server=f"127.0.0.1:{cluster}", secret=SECRET) as ex:
        assert ex._max_workers == 3, "max_workers given: what it says"
    unreachable = DistributedDispatcher("127.0.0.1", _closed_port(), secret=SECRET)
    with pytest.raises(RuntimeError, match="cannot reach the server"):
        unreachable.cluster_workers()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_keyword_arguments_are_the_functions_own(where):
    with where() as ex:
        assert ex.submit(nap, seconds=0).result(timeout=60) == 0
        with pytest.raises(TypeError):
            ex.submit(square, timeout=1).result(timeout=60)


def test_cancel_a_queued_and_a_running_call(where):
    with where() as ex, socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        port = listener.getsockname()[1]
        running = [ex.submit(announced_nap, port, 60) for _ in range(2)]
        for _ in running:
            started(listener)
        queued = ex.submit(nap, 60)
        assert queued.cancel() and queued.cancelled() and queued.done()
        assert running[0].cancel(), "a running call is cancelled too"
        assert running[0].cancel(), "again: still cancelled"
        with pytest.raises(cf.CancelledError):
            running[0].result(timeout=1)
        # Its worker was killed and replaced: a new call runs beside the other nap.
        assert ex.submit(square, 4).result(timeout=60) == 16
        running[1].cancel()
        done = ex.submit(square, 5)
        assert done.result(timeout=60) == 25 and not done.cancel()


def test_callbacks_wait_and_as_completed():
    with blitzen.Executor(max_workers=2) as ex:
        called = []
        seen = threading.Event()
        f = ex.submit(nap, 0.2)
        f.add_done_callback(lambda fut: (called.append(fut.result()), seen.set()))
        assert seen.wait(60) and called == [0.2]
        f.add_done_callback(lambda fut: called.append("at once"))
        assert called == [0.2, "at once"], "a callback on a done future runs at once"

        slow, quick = ex.submit(nap, 30), ex.submit(nap, 0.1)
        done, not_done = cf.wait([slow, quick], timeout=60, return_when=cf.FIRST_COMPLETED)
        assert done == {quick} and not_done == {slow}
        done, not_done = cf.wait([slow], timeout=0.1)
        assert not done and not_done == {slow}
        with pytest.raises(TimeoutError):
            for _ in cf.as_completed([slow], timeout=0.2):
                pass
        # A cancel wakes those waiting on the future.
        threading.Timer(0.2, slow.cancel).start()
        done, _ = cf.wait([slow], timeout=60)
        assert done == {slow} and slow.cancelled()
        order = [g.result() for g in cf.as_completed([ex.submit(nap, t) for t in (0.6, 0.05)])]
        assert order == [0.05, 0.6]


def test_map_in_order_in_chunks_and_with_a_timeout(where):
    with where() as ex:
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
        assert list(ex.map(pow, range(20), [2] * 20, chunksize=7)) == [i * i for i in range(20)]
        with pytest.raises(ValueError):
            ex.map(square, range(3), chunksize=0)
        results = ex.map(fails, ["a", "b"])
        with pytest.raises(KeyError, match="a"):
            next(results)
        slow = ex.map(nap, [0.0, 30.0], timeout=0.5)
        assert next(slow) == 0.0
        with pytest.raises(TimeoutError):
            next(slow)


def test_shutdown_waits_or_cancels_and_then_refuses():
    ex = blitzen.Executor(max_workers=2)
    running = [ex.submit(nap, 0.5) for _ in range(2)]
    queued = [ex.submit(nap, 30) for _ in range(3)]
    time.sleep(0.2)
    ex.shutdown(wait=True, cancel_futures=True)
    # Cancelled too: the executor does not see a call start (see `Executor.shutdown`).
    assert all(f.cancelled() or f.result() == 0.5 for f in running)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 2)

    ex = blitzen.Executor(max_workers=1)
    pending = [ex.submit(nap, 0.2) for _ in range(3)]
    ex.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.2 for f in pending), "wait=True lets them finish"

    ex = blitzen.Executor(max_workers=1)
    later = ex.submit(nap, 0.3)
    ex.shutdown(wait=False)
    assert not later.done() and later.result(timeout=60) == 0.3

    for bad in (0, -1):
        with pytest.raises(ValueError):
            blitzen.Executor(max_workers=bad)


def test_an_initializer_runs_once_per_worker_and_again_in_a_replacement(where, tmp_path):
    log = tmp_path / "initialized"
    with where(initializer=remember, initargs=(str(log), "model")) as ex:
        seen = [ex.submit(setup_value, i).result(timeout=60) for i in range(20)]
        assert {value for _, value, _ in seen} == {"model"}
        assert [x for _, _, x in seen] == list(range(20))
        pids = log.read_text().split()
        assert len(pids) == len(set(pids)), "once per worker process"
        assert {pid for pid, _, _ in seen} <= {int(p) for p in pids}
        assert isinstance(ex.submit(hard_exit, 3).exception(timeout=60), WorkerCrashed)
        after = [ex.submit(setup_value, i).result(timeout=60) for i in range(20)]
        assert {value for _, value, _ in after} == {"model"}
        assert len(log.read_text().split()) > len(pids) or {p for p, _, _ in after} <= set(
            int(p) for p in pids
        )


def test_a_failing_initializer_breaks_the_executor(where):
    with where(initializer=broken_setup) as ex:
        first = ex.submit(square, 2)
        with pytest.raises(cf.BrokenExecutor, match="no model here"):
            first.result(timeout=60)
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(square, 3)


def test_a_future_stands_for_an_argument(where):
    with where() as ex, where() as other:
        a = ex.submit(square, 3)
        b = ex.submit(square, a)
        c = ex.submit(pow, b, 2)
        assert (a.result(timeout=60), b.result(timeout=60), c.result(timeout=60)) == (9, 81, 6561)
        assert ex.submit(square, a).result(timeout=60) == 81, "a done future is its value"
        broken = ex.submit(fails, "root")
        child = ex.submit(square, broken)
        grandchild = ex.submit(square, child)
        for f in (child, grandchild):
            with pytest.raises(DependencyFailed, match="root"):
                f.result(timeout=60)
        with pytest.raises(ValueError, match="another executor"):
            ex.submit(square, other.submit(square, 1))
        with pytest.raises(TypeError, match="whole argument"):
            ex.submit(sum, [a])


def test_asyncio_awaits_gathers_and_cancels(where):
    with where() as ex:

        async def main():
            values = await asyncio.gather(*(ex.submit(square, i) for i in range(1000)))
            assert values == [i * i for i in range(1000)]
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(ex, square, 12) == 144
            assert await asyncio.wrap_future(ex.submit(square, 5)) == 25
            with socket.create_server(("127.0.0.1", 0)) as listener:
                listener.setblocking(False)
                future = ex.submit(announced_nap, listener.getsockname()[1], 60)
                waiting = asyncio.ensure_future(future)
                # One turn of the loop: the task starts awaiting the future. (A task cancelled
                # before it ever ran never awaited it, and leaves it alone.)
                await asyncio.sleep(0)
                told, _ = await loop.sock_accept(listener)
                told.close()
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            return future

        future = asyncio.run(main())
        assert future.cancelled(), "cancelling the asyncio task cancelled the Blitzen task"
        assert ex.submit(square, 2).result(timeout=60) == 4


def test_an_executor_on_an_existing_dispatcher_leaves_it_running():
    with blitzen.MulticoreDispatcher(2) as d:
        with blitzen.Executor(dispatcher=d) as ex:
            assert ex.submit(square, 6).result(timeout=60) == 36
            assert ex._max_workers == 2
            # A result fetched behind the executor's back: its future says so, and the
            # executor carries on.
            taken = ex.submit(nap, 0.3)
            # (Out of the executor's watch first, so that only this thread fetches it.)
            d._native.unwatch(ex._state.watch, [taken._task])
            assert d.get_results(taken._task) == 0.3
            with pytest.raises(blitzen.Lost, match="fetched from its dispatcher directly"):
                taken.result(timeout=60)
            assert ex.submit(square, 7).result(timeout=60) == 49
        assert d.get_results(d.run(square, 7)) == 49
