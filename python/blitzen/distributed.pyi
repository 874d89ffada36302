"""``DistributedDispatcher``: the same API over a cluster."""

from collections.abc import Callable, Mapping

from blitzen._dispatch import Dispatcher

DEFAULT_PORT: int

class DistributedDispatcher(Dispatcher):
    server_ip: str
    port: int
    def __init__(
        self,
        server_ip: str = ...,
        port: int | None = ...,
        secret: str | bytes | None = ...,
        connect_timeout: float | None = ...,
        plaintext: bool = ...,
        echo: bool = ...,
        allow_insecure: bool = ...,
        unrunnable_limit: float | None = ...,
    ) -> None: ...
    def cluster_workers(self) -> int: ...
    def spawn_server(self, duration: float | None = ...) -> None: ...
    def spawn_client(
        self,
        workers: int | None = ...,
        cpus: int | None = ...,
        memory: int | str | None = ...,
        resources: Mapping[str, int] | None = ...,
        initializer: Callable[[], object] | str | None = ...,
        give_up_after: float | None = ...,
        idle_timeout: float | None = ...,
        time_limit: float | None = ...,
        allocation: str | None = ...,
        server_file: str | None = ...,
    ) -> None: ...

__all__ = ["DistributedDispatcher", "DEFAULT_PORT"]
