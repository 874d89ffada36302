"""``MulticoreDispatcher``: a pool of worker processes on this machine."""

import os

from blitzen import _native, _task
from blitzen import logging as _logging
from blitzen._dispatch import Dispatcher, _offer


class MulticoreDispatcher(Dispatcher):
    """Runs Python functions on ``workers`` worker processes (default: one per CPU).

    The workers are Python interpreters that Blitzen's Rust pool starts, watches and replaces:
    an exception is the task's ``TaskFailed``, a segfault or ``os._exit`` is ``WorkerCrashed``
    and a ``timeout`` kills the worker's whole process group (``TimedOut``); either way the pool
    is back to ``workers`` at once. Workers persist: no interpreter starts per task. Functions
    of ``__main__``, lambdas and closures work (they travel by value, with cloudpickle); those
    of importable modules are imported by the workers, which share this process's ``sys.path``.

    ``cpus``, ``memory`` (bytes or ``"16GiB"``) and ``resources`` (``{"gpu": 2}``) are what the
    running tasks may hold at once, against what each ``run`` asks for (default: one CPU per
    worker, the machine's memory, no counted resources). A resource's devices are numbered from
    0, or named by index (``{"gpu": [2, 3]}``); a call holding some is given its own, in
    ``os.environ`` while it runs: ``BLITZEN_RESOURCE_GPU`` and, for ``gpu``,
    ``CUDA_VISIBLE_DEVICES``.

    ``initializer(*initargs)`` runs once in each worker process before its first task (again
    in a worker that replaces one): a model loaded there serves every task of that worker. If
    it raises, the constructor raises with its traceback; if it raises in replacement workers,
    the pool gives up after 5 in a row, and its tasks end ``Lost`` with the traceback. It runs
    within the workers' startup limit (30 s).

    The constructor returns once every worker is ready.
    """

    def __init__(
        self,
        workers=None,
        echo=True,
        cpus=None,
        memory=None,
        resources=None,
        initializer=None,
        initargs=(),
    ):
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        _logging._install()
        command, env = _task.worker_command(initializer, initargs)
        counts, devices = _offer(resources)
        native = _native.Dispatcher.multicore(
            workers, command, env, cpus, memory, counts, echo, devices
        )
        super().__init__(native, echo)
        self.workers = workers

    def worker_pids(self, timeout=10.0):
        """The pids of the workers once all are up (a replacement takes a few milliseconds),
        or ``None`` after ``timeout`` seconds."""
        return self._native.wait_for_workers(timeout)
