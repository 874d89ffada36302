"""``blitzen.Executor``: Blitzen as a ``concurrent.futures.Executor``, on a local pool or a
cluster, for code written against ``ProcessPoolExecutor``, ``loop.run_in_executor`` or
anything else that takes an executor.

Each ``submit`` is one Blitzen task; its ``Future`` is settled by a thread of the executor's
own, which waits for finished tasks without the interpreter lock and fetches them in batches.
Everything ``concurrent.futures`` documents holds (``result``/``exception`` with timeouts,
callbacks, ``wait``, ``as_completed``, ``map`` with ``timeout`` and ``chunksize``,
``shutdown(wait, cancel_futures)``, ``initializer`` and ``BrokenExecutor``), and beyond it:

- ``Future.cancel()`` cancels the task even while it runs (its worker's processes are killed,
  and the worker replaced), so a ``Future`` is never in the running state: it can always be
  cancelled until it is done.
- A ``Future`` of this executor among the arguments of ``submit`` stands for its task's value:
  the call runs once that task has returned, with the value in its place, without the value
  coming back here on the way (on a cluster the server hands it over). If that task did not
  return a value the call does not run, and its future raises ``blitzen.DependencyFailed``.
- ``await future`` works in asyncio code, and cancelling the awaiting asyncio task cancels the
  Blitzen task.
"""

import asyncio
import concurrent.futures as _cf
import itertools
import os
import threading
import time
import uuid
import weakref
from concurrent.futures import _base

import cloudpickle

from blitzen import _task
from blitzen.errors import Cancelled, DependencyFailed, Lost, TaskError, TaskFailed
from blitzen.multicore import MulticoreDispatcher


class Future(_cf.Future):
    """A ``concurrent.futures.Future`` of one Blitzen task (see the module's text)."""

    def __init__(self):
        super().__init__()
        self._state_of = None  # the executor's `_State`
        self._task = None  # the task's number
        self._outcome = _PENDING  # its value or error once fetched, before it is set here

    def cancel(self):
        """Cancels the call, running or not: returns ``False`` only once it is done."""
        with self._condition:
            if not super().cancel():
                return False
            first = self._state == _base.CANCELLED
            if first:
                # What `wait` and `as_completed` listen for, as an executor's worker would.
                self.set_running_or_notify_cancel()
        if first and self._state_of is not None and self._task is not None:
            self._state_of.cancel_task(self._task)
        return True

    def result(self, timeout=None):
        self._wait_here(timeout)
        return super().result(timeout)

    def exception(self, timeout=None):
        self._wait_here(timeout)
        return super().exception(timeout)

    def _wait_here(self, timeout):
        """A thread that blocks on the result waits for the task itself, as
        ``get_results`` does (without a hand-off through the settling thread, which costs
        two wake-ups), and settles the future."""
        state = self._state_of
        if state is None or self._task is None or self._outcome is not _PENDING or self.done():
            return
        if len(state.tasks) > _WAIT_HERE_FOR:
            return  # the settling thread fetches them in batches, which costs less per task
        native = state.dispatcher._native
        # The settling thread is not told of it meanwhile: one wake-up, not two.
        native.unwatch(state.watch, [self._task])
        waited = False
        try:
            native.results([self._task], False, timeout)
            waited = True
        except TimeoutError:
            raise _cf.TimeoutError() from None
        except KeyError:
            # Fetched before it left the watch: by the settling thread, which sets it, or
            # behind the executor's back, and then it is set `Lost` here.
            waited = True
            state.settle_now([self._task])
            return
        finally:
            if not waited:
                native.watch_more(state.watch, [self._task])
        state.settle_now([self._task])

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def __reduce__(self):
        raise TypeError(
            "a Future stands for a whole argument of Executor.submit(), not inside another value"
        )


_PENDING = object()

# A thread blocking on a result waits for its task itself when this few are pending: then the
# hand-off costs more than the batch saves.
_WAIT_HERE_FOR = 8


class _RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised by a task: its traceback on the worker (as
    ``ProcessPoolExecutor`` shows it)."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return f'\n"""\n{self.text}"""'


class _State:
    """What the executor and its settling thread share; the thread holds this, not the
    executor, so that a forgotten executor is collected (and shut down)."""

    def __init__(self, dispatcher, owned):
        self.dispatcher = dispatcher
        self.owned = owned
        self.lock = threading.Lock()
        # Tasks not fetched yet, by number: their futures (cancelled ones too, until their
        # outcome comes and is dropped).
        self.tasks = {}
        # What the settling thread waits on: the tasks no other thread waits for itself.
        self.watch = dispatcher._native.watch()
        self.shutdown = False
        self.broken = None

    def _fetch(self, tasks):
        native = self.dispatcher._native
        try:
            return native.results(tasks, True, None)
        except KeyError:
            return _fetch_each(native, tasks)

    def cancel_task(self, task):
        try:
            self.dispatcher._native.cancel([task])
        except Exception:  # the dispatcher is gone: the task ended with it
            pass

    def settle(self):
        """The settling thread: sets each future as its task finishes, until the executor is
        shut down and every task is in; then stops the dispatcher if it made it."""
        while True:
            with self.lock:
                if self.shutdown and not self.tasks:
                    break
            finished = self.watch.next_batch()
            if finished:
                self.settle_now(finished)
        if self.owned:
            self.dispatcher.shutdown()

    def settle_now(self, finished):
        """Fetches the finished tasks ``finished`` (those not fetched yet) and sets their
        futures."""
        with self.lock:
            finished = [task for task in finished if task in self.tasks]
            if not finished:
                return
            rows = self._fetch(finished)
            self.dispatcher._printed()
            settled = []
            for task, row in zip(finished, rows):
                future = self.tasks.pop(task)
                if row is None:
                    message = f"task {task}'s result was fetched from its dispatcher directly"
                    future._outcome = Lost(message, task)
                else:
                    future._outcome = self.dispatcher._result(row)
                settled.append(future)
            broken = [f for f in settled if _initializer_failed(f._outcome)]
            if broken and self.broken is None:
                self.broken = (
                    "a worker's initializer raised; the executor cannot be used any more:\n"
                    + broken[0]._outcome.exception.args[0]
                )
                # As a thread pool's: every pending call fails with the executor.
                for task in self.tasks:
                    self.cancel_task(task)
            if self.shutdown and not self.tasks:
                self.watch.interrupt()
        for future in settled:
            _set(future, self.broken)


def _fetch_each(native, tasks):
    """The rows of ``tasks`` one by one, ``None`` for one fetched by someone else (a program
    that also drives the executor's dispatcher itself)."""
    rows = []
    for task in tasks:
        try:
            rows.extend(native.results([task], True, None))
        except KeyError:
            rows.append(None)
    return rows


def _initializer_failed(outcome):
    return isinstance(outcome, TaskFailed) and isinstance(
        outcome.exception, _task.InitializerFailed
    )


def _set(future, broken):
    """Sets ``future`` from its fetched outcome, unless it was cancelled meanwhile."""
    outcome = future._outcome
    try:
        if not isinstance(outcome, TaskError):
            future.set_result(outcome)
        elif broken is not None and (_initializer_failed(outcome) or isinstance(outcome, Cancelled)):
            future.set_exception(_cf.BrokenExecutor(broken))
        elif isinstance(outcome, TaskFailed) and isinstance(outcome.exception, BaseException):
            raised = outcome.exception
            raised.__cause__ = _RemoteTraceback(outcome.traceback)
            future.set_exception(raised)
        else:
            future.set_exception(outcome)
    except _cf.InvalidStateError:  # cancelled while its outcome was on its way
        pass


class Executor(_cf.Executor):
    """A ``concurrent.futures.Executor`` running calls as Blitzen tasks.

    - ``Executor(max_workers=4)``: on a pool of 4 worker processes on this machine (default:
      one per CPU), shut down with the executor.
    - ``Executor(server="host:port")``: on a cluster (``secret=`` or ``BLITZEN_SECRET``, as for
      ``DistributedDispatcher``); ``max_workers`` is then only what ``_max_workers`` says.
    - ``Executor(dispatcher=d)``: on an existing ``MulticoreDispatcher`` or
      ``DistributedDispatcher``, which it leaves running.

    ``initializer(*initargs)`` runs once in each worker process before its first call of this
    executor (again in a worker that replaces one); if it raises, the call's future and every
    pending one raise ``concurrent.futures.BrokenExecutor`` with its traceback, and so does
    ``submit`` from then on. ``echo``: what the calls print is printed here as they print it
    (see ``MulticoreDispatcher``).
    """

    def __init__(
        self,
        max_workers=None,
        initializer=None,
        initargs=(),
        *,
        server=None,
        dispatcher=None,
        secret=None,
        echo=True,
    ):
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(f"max_workers must be an integer, not {max_workers!r}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if server is not None and dispatcher is not None:
            raise ValueError("give a server or a dispatcher, not both")
        if dispatcher is not None:
            owned = False
            workers = getattr(dispatcher, "workers", None)
            if workers is None and max_workers is None:
                workers = _cluster_workers(dispatcher)
        elif server is not None:
            from blitzen.distributed import DistributedDispatcher

            host, port = _address(server)
            dispatcher = DistributedDispatcher(host, port, secret=secret, echo=echo)
            owned, workers = True, None
            if max_workers is None:
                workers = _cluster_workers(dispatcher)
        else:
            dispatcher = MulticoreDispatcher(max_workers, echo=echo)
            owned, workers = True, dispatcher.workers
        #: How many calls run at once, as far as the executor knows (what dask reads): on a
        #: cluster, the workers of the agents connected when it was made (this machine's CPUs
        #: when there were none).
        self._max_workers = max_workers or workers or os.cpu_count() or 1
        self._asked = None  # (when, workers): the cluster's workers, as last asked
        self._setup = None
        if initializer is not None:
            pickled = cloudpickle.dumps((initializer, tuple(initargs)), protocol=_task.PROTOCOL)
            self._setup = (uuid.uuid4().hex, pickled)
        self._state = _State(dispatcher, owned)
        self._settler = threading.Thread(
            target=self._state.settle, name="blitzen-executor", daemon=True
        )
        self._settler.start()
        _LIVE.add(self)

    def submit(self, fn, /, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` as a task; returns its ``Future`` at once."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        state = self._state
        future = Future()
        future._state_of = state
        with state.lock:
            if state.broken is not None:
                raise _cf.BrokenExecutor(state.broken)
            if state.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            args, kwargs, failed = _inputs(state, args, kwargs)
            if failed is None:
                label = _label_of(fn)
                if self._setup is not None:
                    key, setup = self._setup
                    args = (key, setup, fn, *args)
                    fn = _task.initialized
                task = state.dispatcher._submit(fn, args, kwargs, label=label)
                future._task = task
                state.tasks[task] = future
                state.dispatcher._native.watch_more(state.watch, [task])
        if failed is not None:
            future._outcome = failed
            _set(future, None)
        return future

    def _workers_now(self):
        """How many calls can run at once now: on a cluster, its connected agents' workers
        (asked at most once a second; ``_max_workers`` when it has none or cannot be reached)."""
        dispatcher = self._state.dispatcher
        if getattr(dispatcher, "workers", None) is not None:
            return self._max_workers
        now = time.monotonic()
        asked = self._asked
        if asked is None or now - asked[0] > 1.0:
            asked = (now, _cluster_workers(dispatcher) or self._max_workers)
            self._asked = asked
        return asked[1]

    def share(self, value):
        """A ``blitzen.Shared`` handle for ``value``, pickled once: it stands for the value
        among the arguments of ``submit``, for any number of calls, and on a cluster crosses to
        each machine once (see ``MulticoreDispatcher.share``)."""
        return self._state.dispatcher.share(value)

    def map(self, fn, *iterables, timeout=None, chunksize=1, **kwargs):
        """``map(fn, *iterables)`` in parallel, yielding results in order (see
        ``Executor.map``); ``chunksize`` calls go in one task each. A call that raises raises
        when its result is reached; ``timeout`` (seconds from this call) raises
        ``TimeoutError`` for a result not in by then."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout, **kwargs)
        chunks = super().map(_run_chunk, itertools.repeat(fn), _chunks(iterables, chunksize),
                             timeout=timeout, **kwargs)
        return itertools.chain.from_iterable(chunks)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more calls; ``cancel_futures`` cancels those not done (running ones too), and
        ``wait`` returns once every call is done and the pool this executor made has stopped.
        Without ``wait`` that happens in the background."""
        state = self._state
        with state.lock:
            state.shutdown = True
            pending = list(state.tasks.values())
        state.watch.interrupt()
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait and self._settler is not threading.current_thread():
            self._settler.join()

    def __del__(self):
        state = getattr(self, "_state", None)
        if state is not None and not state.shutdown:
            with state.lock:
                state.shutdown = True
            state.watch.interrupt()


# Executors not shut down: at exit their calls finish first, as a thread pool's do.
_LIVE = weakref.WeakSet()


def _at_exit():
    for executor in list(_LIVE):
        executor.shutdown(wait=True)


threading._register_atexit(_at_exit)


def _inputs(state, args, kwargs):
    """The call's arguments with each ``Future`` of this executor replaced: by its value if
    it is in, else by ``result_of`` its task; or the ``DependencyFailed`` the call ends with at
    once, when one is in and is not a value."""
    # Plain loops: this runs for every call.
    for a in args:
        if type(a) is Future:
            break
    else:
        for a in kwargs.values():
            if type(a) is Future:
                break
        else:
            return args, kwargs, None
    failed = []

    def value(a):
        if type(a) is not Future:
            return a
        if a._state_of is not state:
            raise ValueError("a Future of another executor cannot stand for an argument here")
        outcome = a._outcome
        if a.cancelled():
            outcome = Cancelled(f"task {a._task} was cancelled", a._task)
        if outcome is _PENDING:
            return _task.ResultOf(a._task)
        if isinstance(outcome, TaskError):
            failed.append(
                DependencyFailed(f"task {outcome.task_id} did not return a value: {outcome.message}",
                                 outcome.task_id)
            )
        return outcome

    args = tuple(value(a) for a in args)
    kwargs = {k: value(v) for k, v in kwargs.items()}
    return args, kwargs, (failed[0] if failed else None)


# What people see each function's calls as, by function (most programs submit a few).
_LABELS = {}


def _label_of(fn):
    try:
        return _LABELS[fn]
    except (KeyError, TypeError):
        pass
    from blitzen._dispatch import _label

    label = _label(fn)
    try:
        if len(_LABELS) < 1024:
            _LABELS[fn] = label
    except TypeError:  # not hashable
        pass
    return label


def _chunks(iterables, chunksize):
    calls = zip(*iterables)
    while True:
        chunk = tuple(itertools.islice(calls, chunksize))
        if not chunk:
            return
        yield chunk


def _run_chunk(fn, chunk):
    """On a worker: one task of ``map`` with a ``chunksize``."""
    return [fn(*args) for args in chunk]


def _cluster_workers(dispatcher):
    """The workers of a cluster's connected agents, or ``None`` when it has none or its server
    cannot be reached now (the executor's calls wait for it as any dispatcher's do)."""
    try:
        return dispatcher.cluster_workers() or None
    except RuntimeError:
        return None


def _address(server):
    """``"host:port"`` (``"[::1]:7464"``), or a host alone (the default port)."""
    host, sep, port = str(server).rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
        return str(server), None
    if not port.isdigit():
        raise ValueError(f"server must be host:port, not {server!r}")
    return host.strip("[]"), int(port)


__all__ = ["Executor", "Future"]
