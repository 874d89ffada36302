"""``blitzen.Executor``: a ``concurrent.futures.Executor`` on a local pool or a cluster."""

import concurrent.futures
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from blitzen import Shared
from blitzen._dispatch import Dispatcher

_T = TypeVar("_T")

class Future(concurrent.futures.Future[_T]):
    def __await__(self) -> Generator[Any, None, _T]: ...

class Executor(concurrent.futures.Executor):
    _max_workers: int
    def __init__(
        self,
        max_workers: int | None = ...,
        initializer: Callable[..., object] | None = ...,
        initargs: tuple[Any, ...] = ...,
        *,
        server: str | None = ...,
        dispatcher: Dispatcher | None = ...,
        secret: str | bytes | None = ...,
        echo: bool = ...,
    ) -> None: ...
    # Arguments are Any: a Future of this executor stands for its value.
    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]: ...
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = ...,
        chunksize: int = ...,
        **kwargs: Any,
    ) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = ..., *, cancel_futures: bool = ...) -> None: ...
    def share(self, value: Any) -> Shared: ...

__all__ = ["Executor", "Future"]
