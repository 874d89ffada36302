"""``DistributedDispatcher``: the same API over a cluster; ``spawn_server`` and
``spawn_client`` make one from plain scripts, as in the original.

The secret: every connection proves the cluster's shared secret and, with one, is encrypted
(TLS 1.3) with nothing else to set up. Give it as ``secret=`` (``str`` or ``bytes``, at least
16 bytes) or in the ``BLITZEN_SECRET`` environment variable, the same on server, clients and
drivers. Without any secret, the server listens on loopback only unless ``allow_insecure``.
"""

import os

from blitzen import _native, _task
from blitzen import logging as _logging
from blitzen._dispatch import Dispatcher, _counts

DEFAULT_PORT = 7464


class DistributedDispatcher(Dispatcher):
    """A dispatcher for the cluster whose server is at ``server_ip``, on ``port`` (default:
    ``BLITZEN_PORT``, else 7464).

    Nothing is contacted until the first ``run``. If the server cannot be reached within
    ``connect_timeout`` seconds (default 10), the tasks end ``Lost``. ``plaintext=True`` turns
    encryption off (the secret still authenticates). ``allow_insecure=True`` lets
    ``spawn_server`` listen beyond loopback without a secret: anyone who can reach it can then
    make its agents unpickle, and so run, anything. Agents run the calls on Python worker
    processes; an agent whose Python, cloudpickle or blitzen version differs from this
    process's is never given them (the driver logs which versions the agents have).
    ``unrunnable_limit`` (seconds): a call that waits that long while no connected agent can
    run it — none is connected, or all have other versions — ends ``Lost`` saying why, instead
    of waiting for one to come.
    """

    def __init__(
        self,
        server_ip="127.0.0.1",
        port=None,
        secret=None,
        connect_timeout=None,
        plaintext=False,
        echo=True,
        allow_insecure=False,
        unrunnable_limit=None,
    ):
        _logging._install()
        if isinstance(secret, str):
            secret = secret.encode()
        if port is None:
            port = int(os.environ.get("BLITZEN_PORT", DEFAULT_PORT))
        self.server_ip = server_ip
        self.port = port
        server = f"[{server_ip}]:{port}" if ":" in str(server_ip) else f"{server_ip}:{port}"
        native = _native.Dispatcher.cluster(
            server, secret, plaintext, connect_timeout, allow_insecure, unrunnable_limit, echo
        )
        super().__init__(native, echo)

    def cluster_workers(self):
        """The worker processes of the agents connected to the server now (asked on a
        connection of its own, within ``connect_timeout``): what "every worker of the cluster"
        means at this moment. ``RuntimeError`` if the server cannot be reached."""
        return self._native.cluster_workers()

    def spawn_server(self, duration=None):
        """Runs the cluster's server on ``server_ip:port`` for ``duration`` seconds (until
        Ctrl-C or SIGTERM when ``None``), then stops it cleanly. Blocks meanwhile."""
        self._native.spawn_server(duration)

    def spawn_client(
        self,
        workers=None,
        cpus=None,
        memory=None,
        resources=None,
        initializer=None,
        give_up_after=None,
        idle_timeout=None,
        time_limit=None,
        allocation=None,
        server_file=None,
    ):
        """Runs an agent with ``workers`` Python worker processes (default: one per CPU) for
        this server until Ctrl-C or SIGTERM; it waits for the server, and reconnects by itself
        when the server restarts. Blocks meanwhile. ``give_up_after`` (seconds): return once the
        server has not been reachable that long (since the start, or since the connection was
        lost), for a script whose server ends for good (``spawn_server(duration=...)``). Its workers import the modules of the driver's functions from this
        process's ``sys.path`` (the original's ``common.py``).

        It offers ``cpus`` (default: ``workers``), ``memory`` (bytes or ``"16GiB"``; default: the
        machine's) and ``resources`` (``{"gpu": 2}``) to the tasks that ask for them.

        ``initializer``: a function (or ``"module:function"``) each worker runs once before its
        first task, again in a worker that replaces one (see ``MulticoreDispatcher``).

        For agents started on demand (``blitzen-server --autoscale``): ``idle_timeout`` (seconds)
        — leave once no task was held that long; ``time_limit`` (seconds) — leave that long
        after starting, the server sending no task that would outlast it; ``allocation`` — the
        scheduler's name for the job it runs in (default: ``SLURM_JOB_ID``); ``server_file`` —
        where ``blitzen-server --address-file`` says the server is, read before each attempt to
        connect, instead of this dispatcher's address. Leaving, it returns."""
        if workers is None:
            workers = os.cpu_count() or 1
        if callable(initializer):
            command, env = _task.worker_command(initializer)
        else:
            command, env = _task.worker_command(initializer_ref=initializer)
        self._native.spawn_client(
            workers,
            command,
            env,
            cpus,
            memory,
            _counts(resources),
            give_up_after,
            idle_timeout,
            time_limit,
            allocation,
            None if server_file is None else os.fspath(server_file),
        )


__all__ = ["DistributedDispatcher", "DEFAULT_PORT"]
