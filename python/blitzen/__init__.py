"""Blitzen: keep every core busy with independent Python functions, on one machine or a cluster,
and survive whatever the functions do.

- ``MulticoreDispatcher(workers=4)``: a pool of worker processes on this machine.
- ``blitzen.distributed.DistributedDispatcher(server_ip=...)``: the same API over a cluster,
  with ``spawn_server`` and ``spawn_client``.
- ``blitzen.logging``, ``blitzen.utils.get_local_ip``: the original's helpers.

A task that does not return a value appears in ``get_results`` and ``join`` as an exception
object (never ``None``): ``TaskFailed`` (it raised), ``TimedOut``, ``WorkerCrashed``,
``Cancelled``, ``Lost``, all subclasses of ``TaskError``.
"""

from blitzen._version import __version__
from blitzen import _task  # registers the `python` task before anything else uses Blitzen
from blitzen.errors import (
    Cancelled,
    Lost,
    MemoryExceeded,
    TaskError,
    TaskFailed,
    TimedOut,
    WorkerCrashed,
)
from blitzen.multicore import MulticoreDispatcher
from blitzen import distributed, logging, utils

__all__ = [
    "MulticoreDispatcher",
    "TaskError",
    "TaskFailed",
    "TimedOut",
    "WorkerCrashed",
    "MemoryExceeded",
    "Cancelled",
    "Lost",
    "__version__",
]

del _task
