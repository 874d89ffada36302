"""Functions the tests run on workers, from a module of their own: they travel by reference,
and the workers import this module from the driver's `sys.path`."""

import os
import time


def square(x):
    return x * x


def hard_exit(code):
    os._exit(code)


def nap(seconds):
    time.sleep(seconds)
    return seconds


def announced_nap(port, seconds):
    """Tells the test listening on `port` that it has started, then naps."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as told:
        told.sendall(b"started")
    time.sleep(seconds)
    return seconds


def span(seconds):
    """Naps; returns this worker's pid and when the nap began and ended."""
    began = time.time()
    time.sleep(seconds)
    return os.getpid(), began, time.time()


def hog(mib):
    """Holds `mib` MiB for a moment; returns how many bytes it held."""
    held = bytearray(mib << 20)
    return len(held)


def gated(port):
    """Prints a line to each stream, waits until the test listening on `port` says go, then
    prints one more."""
    import socket
    import sys

    print(f"Finished the first half on {os.getpid()}")
    print("a warning before the gate", file=sys.stderr)
    with socket.create_connection(("127.0.0.1", port)) as gate:
        gate.recv(1)
    print("after the gate")
    return 7


def flood(lines):
    """Prints `lines` lines of 100 bytes as fast as it can."""
    import sys

    line = "x" * 99 + "\n"
    for _ in range(lines):
        sys.stdout.write(line)
    return lines


def last_words(n):
    """Prints a line, then ends its worker at once."""
    print(f"last words {n}")
    os._exit(3)


def numbers(n):
    return list(range(n))


def total(values, scale=1):
    return scale * sum(values)


# ----- an executor's per-worker setup -----

SETUP = None


def remember(path, value):
    """An initializer: notes this worker's pid in `path` and keeps `value` for `setup_value`."""
    global SETUP
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    SETUP = value


def setup_value(x):
    """What `remember` kept in this worker, with its pid."""
    return os.getpid(), SETUP, x


def broken_setup():
    raise RuntimeError("no model here")


def flaky_setup(marker):
    """An initializer that raises once the file `marker` exists."""
    if os.path.exists(marker):
        raise RuntimeError("no model here")


def setup_from_env():
    """An agent's initializer (`--initializer calls:setup_from_env`): notes this worker's pid
    in the file `BLITZEN_TEST_SETUP_LOG` names."""
    remember(os.environ["BLITZEN_TEST_SETUP_LOG"], "agent")


def checksum(data, salt=0):
    """A cheap fingerprint of a large `bytes` value (its length and a few sampled bytes)."""
    return len(data), sum(data[:: max(len(data) // 1000, 1)]) + salt


def identity_of(data):
    """This worker's pid and the identity of the object it was handed."""
    return os.getpid(), id(data)


def array_facts(array, salt):
    """What a worker sees of an array it was handed: its pid, the array's identity, whether it
    may write to it, and a checksum."""
    return os.getpid(), id(array), bool(array.flags.writeable), float(array.sum()) + salt


def appended(path, n):
    """Appends `n` to the file at `path` (one line): the order calls of one worker ran in."""
    with open(path, "a") as f:
        f.write(f"{n}\n")
    return n


def held_until_told(port):
    """Tells the test listening on `port` that it has started, then waits until the test says
    "go" on the same connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as told:
        told.sendall(b"started")
        return told.recv(16).decode()


def devices_seen():
    """The devices this call was given, as its environment and a program it starts see them."""
    import subprocess

    started = subprocess.run(
        ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, check=True
    )
    env = os.environ
    return env.get("CUDA_VISIBLE_DEVICES"), env.get("BLITZEN_RESOURCE_GPU"), started.stdout.strip()
