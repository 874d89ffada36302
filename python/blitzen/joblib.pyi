"""``import blitzen.joblib`` registers joblib's ``"blitzen"`` backend."""

import abc
from typing import Any

from blitzen.executor import Executor

SHARE_AT: int

# joblib has no type hints: its base class is left out.
class BlitzenBackend(metaclass=abc.ABCMeta):
    def __init__(
        self,
        executor: Executor | None = ...,
        server: str | None = ...,
        secret: str | bytes | None = ...,
        max_workers: int | None = ...,
        share_at: int | None = ...,
        **kwargs: Any,
    ) -> None: ...
    @property
    def executor(self) -> Executor: ...
    def effective_n_jobs(self, n_jobs: int | None) -> int: ...

def shutdown() -> None: ...

__all__ = ["BlitzenBackend", "shutdown"]
