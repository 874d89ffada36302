"""``import blitzen.joblib`` registers joblib's ``"blitzen"`` backend: ``joblib.Parallel`` and
everything built on it (scikit-learn's ``n_jobs``: ``GridSearchCV``, ``cross_val_score``,
random forests) run their batches as Blitzen tasks, on a local pool or a cluster.

::

    import blitzen.joblib
    from joblib import parallel_config

    with parallel_config(backend="blitzen"):                      # a local pool, one worker per CPU
        search.fit(X, y)
    with parallel_config(backend="blitzen", server="host:7464"):  # a cluster
        search.fit(X, y)

The backend's keywords (``parallel_config(backend="blitzen", ...)``): ``executor=`` (a
``blitzen.Executor`` to use), else ``server=`` and ``secret=`` (a cluster), else
``max_workers=`` (a local pool); and ``share_at=``. The executor is made once per set of
keywords and kept for later calls (a scikit-learn search makes many); it is shut down at exit,
or by ``blitzen.joblib.shutdown()``.

Arguments of 1 MiB and more (numpy arrays, pandas series and frames: scikit-learn's ``X`` and
``y``) are shared as ``share`` does, as loky memory-maps them and dask's ``scatter`` sends them
ahead: pickled once per ``Parallel`` call, sent once to each machine, unpickled once per worker
and handed to its calls (numpy arrays read-only) — a search over one ``X`` sends ``X`` once,
not once per fit. ``share_at=`` sets the size (``None``: never). Only a call's own arguments
are looked at, not values inside them.

``n_jobs=-1`` is every worker: on a cluster, those of the agents connected when a ``Parallel``
call starts. Batches are sized by joblib's own auto-batching, and each batch's result comes
back as soon as it is done (``return_as="generator"`` streams them).
"""

import copy
import os
import threading

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
from joblib.parallel import register_parallel_backend

from blitzen.executor import Executor

# Arrays this large (in bytes) or larger are shared rather than pickled into each batch: loky's
# threshold for memory-mapping them (its `max_nbytes="1M"`).
SHARE_AT = 1 << 20

# Executors made for the backend, by their keywords: reused by later `Parallel` calls.
_EXECUTORS = {}
_LOCK = threading.Lock()


def _executor_for(max_workers=None, server=None, secret=None):
    key = (max_workers, server, secret)
    with _LOCK:
        executor = _EXECUTORS.get(key)
        if executor is None or executor._state.shutdown:
            if server is not None:
                executor = Executor(max_workers, server=server, secret=secret)
            else:
                executor = Executor(max_workers)
            _EXECUTORS[key] = executor
        return executor


class BlitzenBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``"blitzen"`` backend: see the module's text."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    default_n_jobs = -1

    def __init__(
        self,
        executor=None,
        server=None,
        secret=None,
        max_workers=None,
        share_at=SHARE_AT,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - {"nesting_level", "inner_max_num_threads"})
        if unknown:
            raise TypeError(
                f"the blitzen backend takes executor=, server=, secret=, max_workers= or "
                f"share_at=, not {', '.join(unknown)}"
            )
        if share_at is not None and (not isinstance(share_at, int) or share_at < 0):
            raise ValueError(f"share_at must be a size in bytes or None, not {share_at!r}")
        super().__init__(**kwargs)
        self._given = executor
        self._where = (max_workers, server, secret)
        self._futures = set()
        self._share_at = share_at
        # Arrays shared during the current `Parallel` call, by id: (the array, its handle).
        # Holding the array keeps its id from being reused; the handles go at the call's end.
        self._shares = {}
        self._shares_lock = threading.Lock()

    @property
    def executor(self):
        return self._given if self._given is not None else _executor_for(*self._where)

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        workers = self.executor._workers_now()
        if n_jobs is None or n_jobs < 0:
            return max(workers + 1 + n_jobs, 1) if n_jobs is not None else workers
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
        self.parallel = parallel
        n_jobs = self.effective_n_jobs(n_jobs)
        # As loky does: the threads of BLAS and OpenMP in each call share the CPUs, or the
        # calls running at once oversubscribe them (four times slower, measured).
        self._threads = self.inner_max_num_threads or max((os.cpu_count() or 1) // n_jobs, 1)
        return n_jobs

    def submit(self, func, callback=None):
        executor = self.executor
        threads = getattr(self, "_threads", 1)
        batch, holes, handles = self._without_large(func, executor)
        if holes:
            future = executor.submit(_run_batch, threads, holes, batch, *handles)
        else:
            future = executor.submit(_in_threads, func, threads)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _without_large(self, batch, executor):
        """``batch`` (joblib's ``BatchedCalls``) with its arguments of ``share_at`` bytes or
        more left out, where they were (the holes), and the shared handles standing for them:
        arguments only, not values inside them (scikit-learn passes ``X`` and ``y`` so)."""
        items = getattr(batch, "items", None)
        if self._share_at is None or not isinstance(items, list):
            return batch, None, None
        holes, handles, index = [], [], {}
        kept = None
        for call, (function, args, kwargs) in enumerate(items):
            large = [(p, v) for p, v in enumerate(args) if _size_of(v) >= self._share_at]
            large += [(k, v) for k, v in kwargs.items() if _size_of(v) >= self._share_at]
            if not large:
                continue
            if kept is None:
                kept = list(items)
            for where, value in large:
                if id(value) not in index:
                    index[id(value)] = len(handles)
                    handles.append(self._share(value, executor))
                holes.append((call, where, index[id(value)]))
            args = tuple(None if any(w == p for w, _ in large) else v for p, v in enumerate(args))
            kwargs = {k: (None if any(w == k for w, _ in large) else v) for k, v in kwargs.items()}
            kept[call] = (function, args, kwargs)
        if kept is None:
            return batch, None, None
        lighter = copy.copy(batch)
        lighter.items = kept
        return lighter, holes, handles

    def _share(self, value, executor):
        with self._shares_lock:
            held = self._shares.get(id(value))
            if held is None:
                held = self._shares[id(value)] = (value, executor.share(value))
            return held[1]

    def stop_call(self):
        """The `Parallel` call ended: its shared arrays are let go (each is freed once no task
        needs it)."""
        with self._shares_lock:
            self._shares.clear()

    def terminate(self):
        self.stop_call()
        super().terminate()

    def retrieve_result_callback(self, future):
        return future.result()

    def abort_everything(self, ensure_ready=True):
        """A batch failed: the batches still running are cancelled (their workers killed)."""
        for future in list(self._futures):
            future.cancel()


def _in_threads(func, threads):
    """On a worker: one batch, with the thread pools of native libraries limited to
    ``threads`` (with ``threadpoolctl``, which scikit-learn requires, when it is there)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return func()
    with threadpool_limits(limits=threads):
        return func()


def _size_of(value):
    """The bytes of an array-like value (numpy arrays, pandas series and frames), else 0."""
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    if type(value).__name__ == "DataFrame":
        try:
            return int(value.memory_usage(index=True).sum())
        except Exception:  # not pandas' after all
            return 0
    return 0


def _run_batch(threads, holes, batch, *values):
    """On a worker: a batch whose large arguments were shared (``values``: those, each
    unpickled once per worker and kept for its later batches) and left out of it, where
    ``holes`` says: (call, position or keyword, value)."""
    for value in values:
        flags = getattr(value, "flags", None)
        if flags is not None and getattr(flags, "writeable", False):
            flags.writeable = False  # shared by every call of this worker, as loky's memmaps
    items = batch.items
    for call, where, index in holes:
        function, args, kwargs = items[call]
        if type(where) is int:
            args = (*args[:where], values[index], *args[where + 1 :])
        else:
            kwargs = {**kwargs, where: values[index]}
        items[call] = (function, args, kwargs)
    return _in_threads(batch, threads)


def shutdown():
    """Shuts down the executors the backend made (else they are shut down at exit)."""
    with _LOCK:
        made = list(_EXECUTORS.values())
        _EXECUTORS.clear()
    for executor in made:
        executor.shutdown()


register_parallel_backend("blitzen", BlitzenBackend)

__all__ = ["BlitzenBackend", "shutdown"]
