"""Blitzen: keep every core busy with independent Python functions, on one machine or a cluster,
and survive whatever the functions do.

- ``MulticoreDispatcher(workers=4)``: a pool of worker processes on this machine.
- ``blitzen.distributed.DistributedDispatcher(server_ip=...)``: the same API over a cluster,
  with ``spawn_server`` and ``spawn_client``.
- ``Executor(max_workers=4)`` or ``Executor(server="host:port")``: a
  ``concurrent.futures.Executor`` on either, for ``ProcessPoolExecutor`` code and asyncio.
- ``blitzen.logging``, ``blitzen.utils.get_local_ip``: the original's helpers.

A task that does not return a value appears in ``get_results`` and ``join`` as an exception
object (never ``None``): ``TaskFailed`` (it raised), ``TimedOut``, ``WorkerCrashed``,
``Cancelled``, ``Lost``, ``DependencyFailed``, all subclasses of ``TaskError``.

``result_of(task_id)`` among the arguments of ``run`` stands for that task's result: the call
runs with it once it is in.
"""

from blitzen._version import __version__
from blitzen import _task  # registers the `python` task before anything else uses Blitzen
from blitzen.errors import (
    Cancelled,
    DependencyFailed,
    Lost,
    MemoryExceeded,
    TaskError,
    TaskFailed,
    TimedOut,
    WorkerCrashed,
)
from blitzen.multicore import MulticoreDispatcher
from blitzen.executor import Executor
from blitzen._task import ResultOf as _ResultOf
from blitzen._task import Shared
from blitzen import distributed, logging, utils

__all__ = [
    "MulticoreDispatcher",
    "Executor",
    "TaskError",
    "TaskFailed",
    "TimedOut",
    "WorkerCrashed",
    "MemoryExceeded",
    "Cancelled",
    "Lost",
    "DependencyFailed",
    "result_of",
    "Shared",
    "__version__",
]


def result_of(task_id):
    """Stands for the result of task ``task_id`` among the arguments of ``run``:
    ``d.run(clean, result_of(d.run(load, path)))`` runs ``clean`` once ``load`` has returned,
    with its value. If ``load`` did not return one, ``clean`` does not run and its result is
    ``DependencyFailed``."""
    return _ResultOf(task_id)

del _task
