"""How a task that did not return a value appears in ``get_results`` and ``join``."""

class TaskError(Exception):
    message: str
    task_id: int | None
    host: str | None
    pid: int | None
    stdout: str
    stderr: str
    def __init__(
        self,
        message: str,
        task_id: int | None = ...,
        host: str | None = ...,
        pid: int | None = ...,
        stdout: str = ...,
        stderr: str = ...,
    ) -> None: ...

class TaskFailed(TaskError):
    exception: BaseException | None
    traceback: str

class TimedOut(TaskError): ...
class WorkerCrashed(TaskError): ...
class MemoryExceeded(TaskError): ...
class Cancelled(TaskError): ...
class DependencyFailed(TaskError): ...
class Lost(TaskError): ...
