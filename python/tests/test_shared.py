"""``share``: a large value pickled once and stored once, standing for the value among the
arguments of many calls — on one machine and on a real cluster, where the server sends it to
each agent once."""

import pytest

import blitzen
from blitzen import MulticoreDispatcher

from calls import checksum, identity_of
from conftest import free_port
from test_distributed import SECRET, server_status, start_client, start_server_binary

BIG = bytes(range(256)) * (64 << 12)  # 64 MiB


def expected(salt=0):
    return checksum(BIG, salt)


def test_a_shared_value_stands_for_itself_on_one_machine():
    with MulticoreDispatcher(2) as d:
        shared = d.share(BIG)
        assert isinstance(shared, blitzen.Shared) and shared.nbytes > len(BIG)
        ids = [d.run(checksum, shared, salt=i) for i in range(20)]
        assert d.get_results(ids) == [expected(i) for i in range(20)]
        with pytest.raises(TypeError, match="whole argument"):
            d.run(checksum, [shared])
        with MulticoreDispatcher(1) as other:
            with pytest.raises(ValueError, match="another dispatcher"):
                other.run(checksum, shared)
    with MulticoreDispatcher(1) as d:
        shared = d.share(BIG)
        seen = set(d.get_results([d.run(identity_of, shared) for _ in range(10)]))
        assert len(seen) == 1, f"one worker unpickles it once for all its calls: {seen}"
        other = d.share(BIG)
        assert d.get_results(d.run(identity_of, other)) not in seen, "another share, another object"
    with blitzen.Executor(max_workers=2) as ex:
        shared = ex.share(BIG)
        assert [f.result() for f in [ex.submit(checksum, shared, i) for i in range(5)]] == [
            expected(i) for i in range(5)
        ]


def binary_cluster(processes):
    """A `blitzen-server` binary (whose status counts the shared bytes it sent) and a Python
    agent of two workers; returns a function that asks the server how many it sent."""
    port = free_port()
    start_server_binary(processes, port, "--dashboard", f"127.0.0.1:{free_port()}")
    start_client(processes, port, workers=2)
    return port, lambda: server_status(port)["server"]["shared_bytes_sent"]


def test_a_shared_value_crosses_to_an_agent_once(processes):
    port, shared_bytes_sent = binary_cluster(processes)
    with blitzen.Executor(server=f"127.0.0.1:{port}", secret=SECRET) as ex:
        shared = ex.share(BIG)
        futures = [ex.submit(checksum, shared, i) for i in range(30)]
        assert [f.result(timeout=120) for f in futures] == [expected(i) for i in range(30)]
        sent = shared_bytes_sent()
        assert shared.nbytes <= sent < 2 * shared.nbytes, (sent, shared.nbytes)
