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
``max_workers=`` (a local pool). The executor is made once per set of keywords and kept for
later calls (a scikit-learn search makes many); it is shut down at exit, or by
``blitzen.joblib.shutdown()``. ``n_jobs=-1`` is every worker: on a cluster, those of the
agents connected when a ``Parallel`` call starts; batches are sized by joblib's own auto-batching, and each batch's
result comes back as soon as it is done (``return_as="generator"`` streams them).
"""

import os
import threading

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
from joblib.parallel import register_parallel_backend

from blitzen.executor import Executor

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

    def __init__(self, executor=None, server=None, secret=None, max_workers=None, **kwargs):
        unknown = sorted(set(kwargs) - {"nesting_level", "inner_max_num_threads"})
        if unknown:
            raise TypeError(
                f"the blitzen backend takes executor=, server=, secret= or max_workers=, "
                f"not {', '.join(unknown)}"
            )
        super().__init__(**kwargs)
        self._given = executor
        self._where = (max_workers, server, secret)
        self._futures = set()

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
        future = self.executor.submit(_in_threads, func, getattr(self, "_threads", 1))
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

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


def shutdown():
    """Shuts down the executors the backend made (else they are shut down at exit)."""
    with _LOCK:
        made = list(_EXECUTORS.values())
        _EXECUTORS.clear()
    for executor in made:
        executor.shutdown()


register_parallel_backend("blitzen", BlitzenBackend)

__all__ = ["BlitzenBackend", "shutdown"]
