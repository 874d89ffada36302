"""MulticoreDispatcher on real Python worker processes: the original's example, and every way a
task can end."""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import blitzen
from blitzen import (
    Cancelled,
    MulticoreDispatcher,
    TaskError,
    TaskFailed,
    TimedOut,
    WorkerCrashed,
)

from calls import appended, devices_seen, hard_exit, held_until_told, nap, numbers, span, square, total
from conftest import EXAMPLES, run_script


# Module-level functions travel by reference: the workers import this module (its folder is on
# the driver's sys.path, which the workers share).

def fail(message):
    raise ValueError(message)


def segfault():
    ctypes.string_at(0)


def chatty(x):
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def pid_and_pgid():
    return os.getpid(), os.getpgid(0)


def sleeper_child(path):
    child = subprocess.Popen(["sleep", "600"])
    with open(path, "w") as f:
        f.write(str(child.pid))
    time.sleep(600)


class Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("holds a lock")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("cannot pickle this exception")


def raise_unpicklable():
    import threading

    raise Unpicklable(threading.Lock())


@pytest.fixture
def pool():
    d = MulticoreDispatcher(workers=2)
    try:
        yield d
    finally:
        d.shutdown()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def wait_until(predicate, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ----- the original's example -----


def test_the_original_multicore_example_runs_unchanged():
    script = EXAMPLES / "multicore" / "demo.py"
    p = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    first = next(line for line in lines if line.startswith("Recevied results"))
    values = eval(first.split(":", 1)[1])  # five delays, each 3 to 5
    assert len(values) == 5 and all(3 <= v <= 5 for v in values), first
    # What f1 printed in its worker reaches the driver's stdout when its result is fetched.
    assert sum(line.startswith("Finished after") for line in lines) == 5, p.stdout
    # join() returns what was not fetched yet: f2's failure, as an exception object, not None.
    last = [line for line in lines if line.startswith("Recevied results")][1]
    assert "TaskFailed" in last and "ValueError: Throwing error" in last, last


# ----- values, order, options -----


def test_results_come_in_the_order_of_the_ids(pool):
    ids = [pool.run(square, i) for i in range(200)]
    assert pool.get_results(list(reversed(ids))) == [i * i for i in reversed(range(200))]


def test_kwargs_reach_the_function_and_run_returns_int_ids(pool):
    task_id = pool.run(lambda a, b=0: a - b, 10, b=3)
    assert isinstance(task_id, int)
    assert pool.get_results([task_id]) == [7]


def test_clear_false_keeps_results_and_a_fetched_id_is_a_key_error(pool):
    task_id = pool.run(square, 3)
    assert pool.get_results([task_id], clear=False) == [9]
    assert pool.get_results([task_id]) == [9]
    with pytest.raises(KeyError, match="already fetched"):
        pool.get_results([task_id])
    with pytest.raises(KeyError, match="not submitted"):
        pool.get_results([10_000])


def test_a_wait_with_a_timeout_gives_up_and_keeps_the_result(pool):
    task_id = pool.run(nap, 1.0)
    with pytest.raises(TimeoutError, match="1 of 1 tasks are still unfinished"):
        pool.get_results([task_id], timeout=0.1)
    assert pool.get_results([task_id]) == [1.0]


def test_lambdas_closures_and_builtins_travel(pool):
    base = 100

    def closure(x):
        return base + x

    ids = [pool.run(lambda x: x * 3, 5), pool.run(closure, 1), pool.run(max, 3, 9, 4)]
    assert pool.get_results(ids) == [15, 101, 9]


def test_a_function_defined_in_the_drivers_main_runs_on_the_workers(tmp_path):
    p = run_script(
        "import blitzen\n"
        "def triple(x):\n"
        "    return 3 * x\n"
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "def make(x):\n"
        "    return Point(x)\n"
        "if __name__ == '__main__':\n"
        "    with blitzen.MulticoreDispatcher(workers=2) as d:\n"
        "        ids = [d.run(triple, i) for i in range(4)] + [d.run(make, 7)]\n"
        "        *values, point = d.get_results(ids)\n"
        "        print(values, type(point).__name__, point.x)\n",
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[0, 3, 6, 9] Point 7"


def test_numpy_arrays_go_and_come_back(pool):
    np = pytest.importorskip("numpy")
    a = np.arange(1_000_000, dtype=np.float64)
    (doubled,) = pool.get_results([pool.run(np.multiply, a, 2.0)])
    assert isinstance(doubled, np.ndarray) and doubled.shape == a.shape
    assert float(doubled.sum()) == float(a.sum()) * 2


def test_large_values_travel_intact(pool):
    ids = [pool.run(bytes, 4 << 20) for _ in range(4)]
    assert [len(v) for v in pool.get_results(ids)] == [4 << 20] * 4
    # Large bytes skip unpickling; everything around the threshold, and other types, comes
    # back exactly as it was.
    values = [os.urandom(n) for n in (0, 3, 65535, 65536, 65537, 1 << 20)]
    values += [bytearray(b"x" * 70000), memoryview(b"y" * 70000).tobytes(), [b"z" * 70000]]
    back = pool.get_results([pool.run(lambda v: v, v) for v in values])
    assert back == values and [type(v) for v in back] == [type(v) for v in values]


def test_map_imap_and_imap_unordered(pool):
    assert pool.map(square, range(10)) == [i * i for i in range(10)]
    assert list(pool.imap(square, range(10))) == [i * i for i in range(10)]
    # The slow one is submitted first and arrives last.
    unordered = list(pool.imap_unordered(nap, [0.5, 0.0, 0.0]))
    assert unordered[-1] == 0.5 and sorted(unordered) == [0.0, 0.0, 0.5]
    with pytest.raises(TaskFailed, match="ValueError: bad input"):
        pool.map(fail, ["bad input"])


def test_a_call_is_never_queued_behind_a_long_one_taken_for_short(pool):
    # Thousands of tiny calls teach the pool that `square` is short. `span` is another
    # function: its calls are not taken for short, so none is queued behind the long nap on a
    # busy worker; the third waits for the short nap's worker to be free.
    pool.get_results([pool.run(square, i) for i in range(2000)])
    long, short, third = pool.get_results(
        [pool.run(span, 2.0), pool.run(span, 0.2), pool.run(span, 0.2)]
    )
    assert long[0] != short[0]
    assert third[0] == short[0] and third[1] < long[2], (long, short, third)


def test_what_a_task_prints_is_echoed_when_its_result_is_fetched(pool, capfd):
    assert pool.get_results([pool.run(chatty, 7)]) == [7]
    out, err = capfd.readouterr()
    assert "out 7" in out and "err 7" in err


# ----- failures -----


def test_a_raise_is_task_failed_with_the_exception_and_traceback(pool):
    task_id = pool.run(fail, "no luck")
    (result,) = pool.get_results([task_id])
    assert isinstance(result, TaskFailed) and isinstance(result, TaskError)
    assert isinstance(result.exception, ValueError) and str(result.exception) == "no luck"
    assert result.__cause__ is result.exception
    assert 'raise ValueError(message)' in result.traceback
    assert result.task_id == task_id and result.host is None and result.pid > 0
    assert "ValueError: no luck" in str(result)
    # The worker survived: no replacement.
    assert pool.get_results([pool.run(square, 2)]) == [4]


def test_a_higher_priority_starts_first_and_nonsense_is_refused(tmp_path):
    import socket

    order = tmp_path / "order"
    with MulticoreDispatcher(1) as d, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        # The one worker is busy until told to go, while the rest queue up behind it.
        blocker = d.run(held_until_told, listener.getsockname()[1])
        told, _ = listener.accept()
        with told:
            assert told.recv(16) == b"started"
            low = [d.run(appended, str(order), n) for n in range(5)]
            high = [d.run(appended, str(order), n, priority=10) for n in range(5, 8)]
            told.sendall(b"go")
        assert d.get_results([blocker, *low, *high]) == ["go", *range(8)]
        assert [int(n) for n in order.read_text().split()] == [5, 6, 7, 0, 1, 2, 3, 4]
        for bad in (1.5, "high", True, 2**31):
            with pytest.raises(ValueError, match="priority must be an integer"):
                d.run(square, 2, priority=bad)


def test_a_call_holding_a_gpu_is_given_its_own_device():
    with MulticoreDispatcher(2, resources={"gpu": [3, 5]}) as d:
        held = [d.run(devices_seen, resources={"gpu": 1}) for _ in range(6)]
        plain = d.run(devices_seen)
        seen = d.get_results(held)
        for cuda, gpu, child in seen:
            assert cuda in ("3", "5") and gpu == cuda and child == cuda, seen
        assert d.get_results(plain) == (None, None, ""), "named only while a call holds it"
    with pytest.raises(ValueError, match="names a device twice"):
        MulticoreDispatcher(1, resources={"gpu": [1, 1]})
    with pytest.raises(ValueError, match="device indices"):
        MulticoreDispatcher(1, resources={"gpu": ["a"]})


def test_a_function_sent_by_value_shows_its_own_file_and_line(pool):
    divisor = 0

    def divide(x):  # a closure: cloudpickle sends it by value, as a script's functions
        return x / divisor

    (result,) = pool.get_results([pool.run(divide, 1)])
    assert isinstance(result, TaskFailed) and isinstance(result.exception, ZeroDivisionError)
    assert f'File "{__file__}"' in result.traceback, result.traceback
    assert "return x / divisor" in result.traceback
    assert "divide` raised (worker pid" in str(result)


def test_an_exception_that_does_not_pickle_still_gives_its_traceback(pool):
    (result,) = pool.get_results([pool.run(raise_unpicklable)])
    assert isinstance(result, TaskFailed) and result.exception is None
    assert "Unpicklable: holds a lock" in result.traceback


def test_a_value_that_does_not_pickle_is_a_task_error(pool):
    import threading

    (result,) = pool.get_results([pool.run(threading.Lock)])
    assert type(result) is TaskError and "cannot pickle the value" in str(result)


@pytest.mark.parametrize(
    "function, args, exit_text",
    [(segfault, (), "signal 11"), (hard_exit, (7,), "code 7")],
    ids=["segfault", "os._exit"],
)
def test_a_crash_is_worker_crashed_and_the_pool_is_back_to_full_strength(
    pool, function, args, exit_text
):
    before = pool.worker_pids()
    ids = [pool.run(square, i) for i in range(20)]
    crasher = pool.run(function, *args)
    ids += [pool.run(square, i) for i in range(20)]
    (crashed,) = pool.get_results([crasher])
    assert isinstance(crashed, WorkerCrashed), crashed
    assert exit_text in str(crashed) and crashed.pid in before
    # Only the crashing task failed: the others, before and after it, have their values.
    assert pool.get_results(ids) == [i * i for i in range(20)] * 2
    after = pool.worker_pids()
    assert len(after) == 2 and crashed.pid not in after


def test_a_timeout_kills_the_workers_process_group(pool, tmp_path):
    child_file = tmp_path / "child"
    task_id = pool.run(sleeper_child, str(child_file), timeout=1.0)
    started = time.monotonic()
    (result,) = pool.get_results([task_id])
    assert isinstance(result, TimedOut), result
    assert time.monotonic() - started < 10
    child = int(child_file.read_text())
    assert wait_until(lambda: not alive(child)), "the task's child outlived the timeout"
    assert len(pool.worker_pids()) == 2


def test_workers_persist_and_each_leads_its_own_process_group(pool):
    workers = pool.worker_pids()
    ids = [pool.run(pid_and_pgid) for _ in range(50)]
    for pid, pgid in pool.get_results(ids):
        assert pid == pgid and pid in workers
    assert pool.worker_pids() == workers


def test_cancel_ends_queued_and_running_tasks(tmp_path):
    with MulticoreDispatcher(workers=1) as d:
        child_file = tmp_path / "child"
        running = d.run(sleeper_child, str(child_file))
        queued = d.run(square, 5)
        assert wait_until(child_file.exists), "the task never started"
        d.cancel([running, queued])
        finished = d.run(square, 6)
        r_running, r_queued, r_finished = d.get_results([running, queued, finished])
        assert isinstance(r_running, Cancelled) and isinstance(r_queued, Cancelled)
        assert r_finished == 36
        assert wait_until(lambda: not alive(int(child_file.read_text())))
        assert d.cancel_all() == 0
        d.cancel(finished)  # a fetched task is left alone


def test_shutdown_cancels_what_is_left_and_join_returns_every_result():
    d = MulticoreDispatcher(workers=2)
    ids = [d.run(square, i) for i in range(5)]
    assert d.join() == [i * i for i in range(5)]
    d = MulticoreDispatcher(workers=1)
    slow = d.run(nap, 30)
    d.shutdown()
    (result,) = d.get_results([slow])
    assert isinstance(result, Cancelled)


def test_bad_arguments_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="positive integer"):
        MulticoreDispatcher(workers=0)
    with MulticoreDispatcher(workers=1) as d:
        with pytest.raises(TypeError, match="needs a callable"):
            d.run(42)
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            d.run(square, 1, timeout=-1)


def test_ctrl_c_interrupts_a_wait(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(
        "import sys, time, blitzen\n"
        "if __name__ == '__main__':\n"
        "    d = blitzen.MulticoreDispatcher(workers=1)\n"
        "    task_id = d.run(time.sleep, 60)\n"
        "    try:\n"
        "        print('waiting', flush=True)\n"
        "        d.get_results([task_id])\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted', flush=True)\n"
        "        d.shutdown()\n"
    )
    p = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        started = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        assert "interrupted" in out, err
        assert time.monotonic() - started < 5
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ----- logging -----


def test_the_cores_events_reach_python_logging(pool):
    import threading

    records = []
    arrived = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record):
            if "worker died" in record.getMessage():
                records.append(record)
                arrived.set()

    keep = Keep()
    logger = blitzen.logging.get_logger()
    logger.addHandler(keep)

    def crash_and_recover():
        (crashed,) = pool.get_results([pool.run(hard_exit, 3)])
        assert isinstance(crashed, WorkerCrashed)
        assert len(pool.worker_pids()) == 2

    try:
        crash_and_recover()
        assert arrived.wait(10), "the core's warning never reached Python"
        assert records[0].levelno == logging.WARNING
        assert records[0].name == "blitzen.common", records[0].name
        # Disabled, then above the level: neither crash is logged. The next crash, with logging
        # back, is; records arrive in order, so by then the others would have arrived too.
        for silence, restore in [
            (blitzen.logging.disable, blitzen.logging.enable),
            (lambda: blitzen.logging.set_loglevel("ERROR"),
             lambda: blitzen.logging.set_loglevel(logging.INFO)),
        ]:
            records.clear()
            arrived.clear()
            silence()
            crash_and_recover()
            restore()
            crash_and_recover()
            assert arrived.wait(10)
            assert len(records) == 1, [r.getMessage() for r in records]
    finally:
        logger.removeHandler(keep)


def test_the_interpreter_exits_cleanly_while_the_core_logs(tmp_path):
    # The script ends with thousands of tasks still running, each logging at DEBUG as it
    # finishes: nothing may reach Python once it has begun to finalize (a thread that takes
    # the interpreter lock then is ended by the interpreter, and the process aborts). Several
    # runs, as this is about timing.
    for _ in range(10):
        p = run_script(
            "import blitzen, blitzen.logging\n"
            "blitzen.logging.set_loglevel('DEBUG')\n"
            "d = blitzen.MulticoreDispatcher(workers=2)\n"
            "ids = [d.run(abs, -i) for i in range(3000)]\n"
            "print(d.get_results(ids[:10]))\n",
            tmp_path,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.strip() == str(list(range(10))), p.stdout


def test_set_logfile_receives_the_cores_events(tmp_path):
    p = run_script(
        "import os, blitzen, blitzen.logging\n"
        "if __name__ == '__main__':\n"
        "    blitzen.logging.set_logfile('blitzen.log')\n"
        "    blitzen.logging.get_logger().info('from python')\n"
        "    with blitzen.MulticoreDispatcher(workers=1) as d:\n"
        "        print(d.get_results([d.run(os._exit, 5)]))\n",
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "blitzen.log").read_text()
    assert "from python" in text and "worker died running a task" in text, text
    assert "worker died" not in p.stderr


def test_get_local_ip_is_an_address():
    import ipaddress

    ipaddress.ip_address(blitzen.utils.get_local_ip())


def test_a_result_stands_for_an_argument_in_a_two_stage_pipeline():
    d = MulticoreDispatcher(workers=2)
    try:
        _pipeline(d)
    finally:
        d.shutdown()


def _pipeline(d):
    loaded = d.run(numbers, 10)
    # A result among the positional arguments, and one among the keyword arguments.
    summed = d.run(total, blitzen.result_of(loaded))
    scaled = d.run(total, [1, 2], scale=blitzen.result_of(summed))
    assert d.get_results([summed, scaled, loaded]) == [45, 135, list(range(10))]
    # A task that did not return a value: what takes its result does not run, and says why.
    broken = d.run(fail, "the input is corrupt")
    after = d.run(total, blitzen.result_of(broken))
    failed, dependent = d.get_results([broken, after])
    assert isinstance(failed, TaskError)
    assert isinstance(dependent, blitzen.DependencyFailed), dependent
    assert "the input is corrupt" in dependent.message and f"task {broken}" in dependent.message
    # A task fetched, or never issued, cannot be waited for.
    for gone in (loaded, 10_000):
        with pytest.raises(KeyError):
            d.run(total, blitzen.result_of(gone))
    with pytest.raises(TypeError):
        d.run(total, [blitzen.result_of(summed)])


def test_run_after_shutdown_or_join_raises_at_the_call():
    d = MulticoreDispatcher(1)
    d.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        d.run(square, 2)
    d = MulticoreDispatcher(1)
    assert d.get_results(d.run(square, 3)) == 9
    d.join()
    with pytest.raises(RuntimeError, match="after shutdown"):
        d.run(square, 4)


def test_a_module_the_workers_cannot_import_says_how_to_fix_it(tmp_path):
    (tmp_path / "othermod.py").write_text("def f(x):\n    return x\n")
    with MulticoreDispatcher(1) as d:
        # On this process's path only after the workers started: they cannot import it.
        sys.path.insert(0, str(tmp_path))
        try:
            import othermod

            failed = d.get_results(d.run(othermod.f, 1))
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("othermod", None)
    assert isinstance(failed, TaskError), failed
    assert "No module named 'othermod'" in failed.message and "--path" in failed.message
