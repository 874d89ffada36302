"""``MulticoreDispatcher``: a pool of worker processes on this machine."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from blitzen._dispatch import Dispatcher

class MulticoreDispatcher(Dispatcher):
    workers: int
    def __init__(
        self,
        workers: int | None = ...,
        echo: bool = ...,
        cpus: int | None = ...,
        memory: int | str | None = ...,
        resources: Mapping[str, int | Sequence[int]] | None = ...,
        initializer: Callable[..., object] | None = ...,
        initargs: tuple[Any, ...] = ...,
    ) -> None: ...
    def worker_pids(self, timeout: float = ...) -> list[int] | None: ...
