"""What both dispatchers share: submitting calls, fetching results, streams, cancel, and
printing what the tasks print while they run."""

import pickle
import sys
import threading
import weakref

from blitzen import _task
from blitzen.errors import _KINDS, TaskError, TaskFailed


class Dispatcher:
    """The methods of ``MulticoreDispatcher`` and ``DistributedDispatcher``.

    ``echo`` (default ``True``): what a task prints is written to this process's
    ``sys.stdout`` and ``sys.stderr`` line by line as it prints it, as a local
    ``multiprocessing.Pool``'s workers would (a task's lines are out before its result is
    returned). Lines beyond what a task may stream (256 KiB at once, then 64 KiB/s) are not
    shown live: they are in its result's ``stdout``/``stderr``, and a note says how many.
    ``echo=False``: nothing is printed; the output is still in each ``TaskError``.
    """

    def __init__(self, native, echo=True):
        self._native = native
        self._echo = echo
        # Set by `shutdown` and `join`: `run` raises from then on.
        self._closed = False
        self._printer = _Printer(native.output_reader()) if echo else None
        # At exit, before the interpreter winds down: no thread is left waiting in Blitzen.
        _LIVE.add(self)

    # ----- the original's API -----

    def run(
        self,
        f,
        *args,
        timeout=None,
        cpus=None,
        memory=None,
        resources=None,
        priority=None,
        **kwargs,
    ):
        """Submits ``f(*args, **kwargs)`` and returns its task id at once: it starts, or is
        queued, without waiting. ``timeout`` (seconds, counted from its start on a worker):
        past it, the worker and what it started are killed, and the result is ``TimedOut``.

        What the call holds while it runs: ``cpus`` (worker slots, default 1), ``memory``
        (bytes, or a size such as ``"4GiB"``; also its limit: past it the result is
        ``MemoryExceeded``) and ``resources`` (counted, by name: ``{"gpu": 1}``). It starts only
        where they are free; what nowhere has ends ``Lost`` at once, and nonsense (0 CPUs, a size
        that does not parse) raises ``ValueError`` here.

        ``priority`` (an integer, 0 by default): among the calls waiting to start, higher first;
        a waiting call's priority rises one level a second up to the highest waiting, so none
        waits for ever. On a cluster the order is among this dispatcher's calls.

        ``blitzen.result_of(t)`` among the arguments stands for task ``t``'s result: the call
        runs once ``t`` has returned, with its value there, and ends ``DependencyFailed`` if
        ``t`` did not return one. ``t`` must be this dispatcher's and not fetched yet
        (``KeyError`` otherwise)."""
        return self._submit(f, args, kwargs, timeout, cpus, memory, resources, priority=priority)

    def _submit(
        self,
        f,
        args,
        kwargs,
        timeout=None,
        cpus=None,
        memory=None,
        resources=None,
        label=None,
        priority=None,
    ):
        """``run``, with the call's arguments as they are (the ``Executor``'s, whose keyword
        arguments are all the function's) and the label people see it as."""
        if self._closed:
            raise RuntimeError("cannot run a task after shutdown() or join()")
        if priority is not None and (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not -(2**31) <= priority < 2**31
        ):
            raise ValueError(f"priority must be an integer of 32 bits, not {priority!r}")
        payload, inputs = _task.dumps_call_with_inputs(f, args, kwargs, self._native)
        return self._native.submit(
            payload,
            timeout,
            0,
            cpus,
            memory,
            _counts(resources),
            label or _label(f),
            inputs,
            priority,
        )

    def get_results(self, task_ids, clear=True, timeout=None):
        """Waits for the tasks and returns their results in the order of ``task_ids``. A task
        that did not return a value is a ``TaskError`` in the list. ``clear=False`` keeps the
        results for another call. ``timeout`` (seconds): give up with ``TimeoutError``, and the
        results stay. Ctrl-C interrupts the wait."""
        single = isinstance(task_ids, int)
        ids = [task_ids] if single else list(task_ids)
        try:
            rows = self._native.results(ids, clear, timeout)
        except KeyboardInterrupt:
            # Ctrl-C (in a notebook: the stop button) ends the wait and the tasks waited for;
            # the dispatcher stays.
            _quietly(self._native.cancel, ids)
            raise
        self._printed()
        results = [self._result(row) for row in rows]
        return results[0] if single else results

    def join(self):
        """Waits for every task, returns every result not yet fetched in the order the tasks
        were run, then shuts down. Ctrl-C cancels them all."""
        self._closed = True
        try:
            rows = self._native.join()
        except KeyboardInterrupt:
            _quietly(self._native.cancel_all)
            raise
        self._printed()
        results = [self._result(row) for row in rows]
        if self._printer is not None:
            self._printer.stop()
        return results

    def shutdown(self):
        """Stops the workers (or leaves the cluster); unfinished tasks end ``Cancelled``.
        Idempotent; also done when the dispatcher is garbage-collected, its ``with`` ends, or
        the interpreter exits. ``run`` raises ``RuntimeError`` from then on."""
        self._closed = True
        self._native.shutdown()
        if self._printer is not None:
            self._printer.stop()

    # ----- beyond the original -----

    def map(self, f, iterable, timeout=None):
        """``[f(x) for x in iterable]``, in parallel, in order; raises the first failure."""
        ids = [self.run(f, x, timeout=timeout) for x in iterable]
        return [_value(r) for r in self.get_results(ids)]

    def imap(self, f, iterable, timeout=None):
        """Like ``map``, yielding each result in order as soon as it and those before it are
        done; raises a failure when it is reached."""
        ids = [self.run(f, x, timeout=timeout) for x in iterable]
        for task_id in ids:
            yield _value(self.get_results(task_id))

    def imap_unordered(self, f, iterable, timeout=None):
        """Like ``imap``, yielding results in the order the tasks finish."""
        ids = [self.run(f, x, timeout=timeout) for x in iterable]
        completions = self._native.completions(ids)
        while True:
            task_id = completions.next()
            if task_id is None:
                return
            yield _value(self.get_results(task_id))

    def share(self, value):
        """Pickles ``value`` once and returns a ``blitzen.Shared`` handle that stands for it
        among the arguments of ``run``, for any number of calls: on a cluster it crosses to
        each machine once (and waits in the agent's cache), instead of once per call. Each
        worker unpickles it once and hands the same object to every call it runs: calls must
        not change it. Freed once the handle is gone and no task needs it."""
        return _task.Shared(self._native.share(_task.dumps_shared(value)), self._native)

    def cancel(self, task_ids):
        """Cancels a task (an id) or several (a list of ids) without waiting: a queued one ends
        ``Cancelled`` at once, a running one has its worker's process group killed (SIGTERM,
        then SIGKILL after a grace). A finished task keeps its result. Fetch the outcome with
        ``get_results`` as usual."""
        self._native.cancel([task_ids] if isinstance(task_ids, int) else list(task_ids))

    def cancel_all(self):
        """Cancels every unfinished task; returns how many."""
        return self._native.cancel_all()

    def pending(self):
        """How many tasks are submitted and not finished."""
        return self._native.pending()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    # ----- results -----

    def _printed(self):
        """Prints every line that came before the results just fetched."""
        if self._printer is not None:
            self._printer.drain()

    def _result(self, row):
        kind, value, message, task_id, host, pid, stdout, stderr, detail, unstreamed, name = row
        if self._printer is not None:
            if unstreamed:
                lines = "1 line of its output was" if unstreamed == 1 else (
                    f"{unstreamed} lines of its output were"
                )
                sys.stderr.write(
                    f"[blitzen] task {task_id}: {lines} not shown as they came (too many, too "
                    "fast, or its worker died first); its result's stdout and stderr have them\n"
                )
        if kind == "ok":
            return pickle.loads(value)
        if kind == "bytes":
            return value
        if kind == "raised":
            return _raised(message, task_id, host, pid, stdout, stderr, detail, name)
        return _KINDS.get(kind, TaskError)(message, task_id, host, pid, stdout, stderr)


class _Printer:
    """Prints the lines streamed tasks print as they come, from a thread of its own.

    The thread waits for lines without the interpreter lock and prints them holding
    ``_lock``; ``drain`` takes the same lock, so once it returns every line that came before
    it is printed."""

    def __init__(self, reader):
        self._reader = reader
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="blitzen-output", daemon=True)
        self._thread.start()
        _PRINTERS.add(self)

    def _run(self):
        while self._reader.wait(None):
            self.drain()

    def drain(self):
        with self._lock:
            for _task, _host, to_stderr, text in self._reader.take():
                stream = sys.stderr if to_stderr else sys.stdout
                try:
                    stream.write(text)
                    stream.flush()
                except Exception:  # a closed stdout loses the lines, as a local print would
                    pass

    def stop(self):
        """After the dispatcher shut down: the thread has printed the last lines and ends."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.drain()


def _quietly(f, *args):
    """``f(*args)``, while a ``KeyboardInterrupt`` is on its way: nothing may replace it."""
    try:
        f(*args)
    except Exception:
        pass


# The dispatchers alive, and the printers whose thread may still run (their dispatcher may be
# gone: its native side shut down, the thread about to end).
_LIVE = weakref.WeakSet()
_PRINTERS = weakref.WeakSet()


def _at_exit():
    """Shuts every dispatcher down and lets every printing thread end, while the interpreter is
    whole: a thread that takes the interpreter lock once its finalization has begun (to return
    from a wait in Blitzen) is ended by the interpreter, which aborts the process. Run with the
    threads' own exit hooks, before the interpreter waits for its threads and winds down."""
    for dispatcher in list(_LIVE):
        dispatcher.shutdown()
    for printer in list(_PRINTERS):
        printer.stop()


threading._register_atexit(_at_exit)


def _label(f):
    """What people see a call of ``f`` as: ``module.qualname`` (``__main__.f2``)."""
    module = getattr(f, "__module__", None) or "?"
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__
    return f"{module}.{name}"


def _counts(resources):
    """``{"gpu": 1}`` as the native side takes it."""
    if resources is None:
        return None
    if not isinstance(resources, dict):
        raise ValueError(f"resources must be a dict such as {{'gpu': 1}}, not {resources!r}")
    return list(resources.items())


def _offer(resources):
    """What a pool offers, ``{"gpu": 2}`` or by device index ``{"gpu": [2, 3]}``, as the native
    side takes it: the counts, and the devices named by index."""
    if resources is None:
        return None, None
    if not isinstance(resources, dict):
        raise ValueError(f"resources must be a dict such as {{'gpu': 2}}, not {resources!r}")
    counts, devices = [], []
    for name, value in resources.items():
        if isinstance(value, (list, tuple, range)):
            indices = list(value)
            if not indices or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in indices):
                raise ValueError(f"resources: {name!r} must list device indices ≥ 0, not {value!r}")
            if len(set(indices)) != len(indices):
                raise ValueError(f"resources: {name!r} names a device twice: {value!r}")
            devices.append((name, indices))
        else:
            counts.append((name, value))
    return counts, devices or None


def _raised(traceback, task_id, host, pid, stdout, stderr, detail, name=""):
    exception = None
    if detail is not None:
        try:
            exception = pickle.loads(detail)
        except Exception:
            exception = None
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "an exception"
    where = f" on {host}" if host else ""
    called = f" `{name}`" if name and name != "python" else ""
    worker = f" (worker pid {pid})" if pid is not None else ""
    error = TaskFailed(
        f"task {task_id}{called} raised{where}{worker}: {last}", task_id, host, pid, stdout, stderr
    )
    error.exception = exception
    error.traceback = traceback
    error.__cause__ = exception
    return error


def _value(result):
    if isinstance(result, TaskError):
        raise result
    return result
