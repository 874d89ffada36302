"""Blitzen: keep every core busy with independent Python functions, on one machine or a cluster."""

from blitzen import distributed as distributed
from blitzen import logging as logging
from blitzen import utils as utils
from blitzen.errors import Cancelled as Cancelled
from blitzen.errors import DependencyFailed as DependencyFailed
from blitzen.errors import Lost as Lost
from blitzen.errors import MemoryExceeded as MemoryExceeded
from blitzen.errors import TaskError as TaskError
from blitzen.errors import TaskFailed as TaskFailed
from blitzen.errors import TimedOut as TimedOut
from blitzen.errors import WorkerCrashed as WorkerCrashed
from blitzen.executor import Executor as Executor
from blitzen.multicore import MulticoreDispatcher as MulticoreDispatcher

__version__: str

class _ResultOf:
    task_id: int
    def __init__(self, task_id: int) -> None: ...

def result_of(task_id: int) -> _ResultOf: ...

class Shared:
    # Made by `share`, not by hand.
    def __init__(self, native: object, owner: object) -> None: ...
    @property
    def nbytes(self) -> int: ...

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
