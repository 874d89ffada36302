"""How a task that did not return a value appears in ``get_results`` and ``join``.

Such a task's place in the list holds an exception object, never ``None`` (the precedent is
``asyncio.gather(..., return_exceptions=True)``): check with ``isinstance(r, TaskError)``, or
``raise r``. ``map`` and ``imap`` raise it instead.

Every class carries where and why: ``task_id``, ``host`` (``None`` on this machine), ``pid`` of
the worker, and what the task wrote to ``stdout`` and ``stderr`` (64 KiB of each at most).
"""


class TaskError(Exception):
    """A task that did not return a value. Used as is for the rarer ways (the call did not
    unpickle on the worker, the value did not pickle, no worker has this package's versions)."""

    def __init__(self, message, task_id=None, host=None, pid=None, stdout="", stderr=""):
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.host = host
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr

    def __reduce__(self):
        return (
            type(self),
            (self.message, self.task_id, self.host, self.pid, self.stdout, self.stderr),
            self.__dict__,
        )

    def __repr__(self):
        return f"{type(self).__name__}(task_id={self.task_id!r}, {self.message!r})"


class TaskFailed(TaskError):
    """The function raised. ``exception`` is the exception itself (``None`` if it could not be
    pickled; it is also this error's ``__cause__``), ``traceback`` its traceback as text, from
    the worker."""

    exception = None
    traceback = ""


class TimedOut(TaskError):
    """The task ran past its ``timeout``; its worker, and every process it started, was killed
    and replaced."""


class WorkerCrashed(TaskError):
    """The worker process died running the task (a segfault, ``os._exit``, out of memory, a
    signal); it was replaced."""


class MemoryExceeded(TaskError):
    """The task went past its ``memory`` limit (``run(f, x, memory="4GiB")``): it raised
    ``MemoryError``, or its worker died of it. The message names the limit and the worker's
    peak memory; the worker was replaced."""


class Cancelled(TaskError):
    """The task was cancelled (``cancel``, or ``shutdown`` before it finished)."""


class DependencyFailed(TaskError):
    """The task did not run: a task whose result it takes (``blitzen.result_of``) did not
    return a value. The message names that first failed task and says how it failed."""


class Lost(TaskError):
    """The task's result cannot be had: the server could not be reached or forgot it, refused
    it, or no agent could run it."""


_KINDS = {
    "timeout": TimedOut,
    "crashed": WorkerCrashed,
    "memory": MemoryExceeded,
    "cancelled": Cancelled,
    "lost": Lost,
    "dependency": DependencyFailed,
    "error": TaskError,
}
