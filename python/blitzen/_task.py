"""The `python` task: how a call is pickled, and how a worker runs it.

The driver pickles ``(function, args, kwargs)`` with cloudpickle, so lambdas, closures and
functions of the driver's ``__main__`` travel by value and functions of importable modules by
reference (the worker imports them, as ``multiprocessing``'s spawn method does). The server
never unpickles anything; a worker unpickles only what reached it through an authenticated
connection.

The task's signature names the versions a pickle depends on. A worker or agent whose versions
differ has another fingerprint, so it never receives a pickle it may misread; the server tells
the driver which versions its agents have instead.
"""

import pickle
import struct
import sys
import traceback

import cloudpickle

from blitzen import _native
from blitzen._version import __version__

PROTOCOL = pickle.HIGHEST_PROTOCOL

SIGNATURE = (
    "fn python(pickle of (function, args, kwargs)) -> pickle "
    f"[{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}, "
    f"cloudpickle {cloudpickle.__version__}, pickle protocol {PROTOCOL}, blitzen {__version__}]"
)

_GROUP = struct.Struct("<Q")

# Codes of `execute`'s answer (see python/src/task.rs).
RETURNED, RAISED, BAD_CALL, BAD_VALUE = 0, 1, 2, 3


def group_of(function):
    """Tells functions apart for the pool's run-time estimates: calls of one function are
    expected to take alike, calls of two need not."""
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    key = f"{getattr(function, '__module__', None)}.{name}"
    return _GROUP.pack(hash(key) & 0xFFFF_FFFF_FFFF_FFFF)


def dumps_call(function, args, kwargs):
    """The payload of one call: the function's group, then the pickle."""
    if not callable(function):
        raise TypeError(f"run() needs a callable, not {type(function).__name__}")
    return group_of(function) + cloudpickle.dumps((function, args, kwargs), protocol=PROTOCOL)


def loads(data):
    return pickle.loads(data)


def _flush():
    # What the task printed must reach the capture files before Blitzen reads them.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def execute(payload):
    """Runs one pickled call on this worker; answers ``(code, data, text)``."""
    try:
        function, args, kwargs = pickle.loads(payload)
    except BaseException as e:
        return (BAD_CALL, None, f"cannot unpickle the call: {type(e).__name__}: {e}")
    try:
        value = function(*args, **kwargs)
    except BaseException as e:
        # The traceback from the task's own frame on, without this function's.
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        text = "".join(traceback.format_exception(type(e), e, tb))
        try:
            exception = cloudpickle.dumps(e, protocol=PROTOCOL)
        except BaseException:
            exception = None
        return (RAISED, exception, text)
    finally:
        _flush()
    try:
        return (RETURNED, pickle.dumps(value, PROTOCOL), None)
    except BaseException:
        pass
    try:
        return (RETURNED, cloudpickle.dumps(value, protocol=PROTOCOL), None)
    except BaseException as e:
        return (BAD_VALUE, None, f"cannot pickle the value, of type {type(value).__name__}: {e}")


def worker_command():
    """The command a pool runs as each worker: this interpreter, with this process's import
    path, entering Blitzen's worker loop."""
    boot = (
        "import json, os, sys; "
        "sys.path[:] = json.loads(os.environ.pop('BLITZEN_SYS_PATH')); "
        "from blitzen import _native; _native.worker_main()"
    )
    import json

    return [sys.executable, "-c", boot], [("BLITZEN_SYS_PATH", json.dumps(sys.path))]


_native.init(SIGNATURE, execute)
