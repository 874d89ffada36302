"""The `python` task: how a call is pickled, and how a worker runs it.

The driver pickles the function with cloudpickle, once per function object, so lambdas,
closures and functions of the driver's ``__main__`` travel by value and functions of importable
modules by reference (the worker imports them, as ``multiprocessing``'s spawn method does);
each call is a pickle of ``(pickled function, args, kwargs)``. Workers keep the functions they
unpickled. The server never unpickles anything; a worker unpickles only what reached it through
an authenticated connection.

The task's signature names the versions a pickle depends on. A worker or agent whose versions
differ has another fingerprint, so it never receives a pickle it may misread; the server tells
the driver which versions its agents have instead.
"""

import io
import os
import pickle
import struct
import sys
import traceback
import types
import weakref
from collections import ChainMap

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
RETURNED, RAISED, BAD_CALL, BAD_VALUE, OUT_OF_MEMORY = 0, 1, 2, 3, 4


def group_of(function):
    """Tells functions apart for the pool's run-time estimates: calls of one function are
    expected to take alike, calls of two need not."""
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    key = f"{getattr(function, '__module__', None)}.{name}"
    return _GROUP.pack(hash(key) & 0xFFFF_FFFF_FFFF_FFFF)


# Functions pickled once, then reused: a function of `__main__` travels by value, and pickling
# its code for every call would cost more than most calls. As with Ray, a function is pickled
# when first run: the globals it reads travel as they were then.
_PICKLED = weakref.WeakKeyDictionary()


def _code_keeping_file(code):
    """cloudpickle's reduction of a code object, with the code's own file name where
    cloudpickle ≥ 3 writes ``<dynamic-code>``: a worker's traceback then names the function's
    file and line, and shows the line where that file is readable."""
    make, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
    return make, args


class _FunctionPickler(cloudpickle.Pickler):
    """cloudpickle's pickler, keeping the file names of functions sent by value."""

    dispatch_table = ChainMap({types.CodeType: _code_keeping_file}, cloudpickle.Pickler.dispatch_table)


def _dumps_function(function):
    out = io.BytesIO()
    _FunctionPickler(out, protocol=PROTOCOL).dump(function)
    return out.getvalue()


def _pickled(function):
    try:
        return _PICKLED[function]
    except (KeyError, TypeError):
        pass
    data = _dumps_function(function)
    try:
        _PICKLED[function] = data
    except TypeError:  # not weakly referable (a built-in): pickled each time, by reference
        pass
    return data


def dumps_call(function, args, kwargs):
    """The payload of one call: the function's group, then a pickle of the pickled function
    and the arguments."""
    if not callable(function):
        raise TypeError(f"run() needs a callable, not {type(function).__name__}")
    call = (_pickled(function), args, kwargs)
    return group_of(function) + cloudpickle.dumps(call, protocol=PROTOCOL)


class ResultOf:
    """Stands for the result of task ``task_id`` among the arguments of ``run``: the call runs
    once that task has returned, with its value in this argument's place. See
    ``blitzen.result_of``."""

    __slots__ = ("task_id",)

    def __init__(self, task_id):
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise TypeError(f"result_of() takes a task id, not {type(task_id).__name__}")
        self.task_id = task_id

    def __repr__(self):
        return f"result_of({self.task_id})"

    def __reduce__(self):
        raise TypeError(
            "result_of() stands for a whole argument of run(), not inside another value"
        )


# A shared value's pickle starts with this and a token of its own (a result's pickle starts
# with its PROTO opcode, 0x80), so that a worker unpickles each shared value once.
_SHARED_MAGIC = b"\x00blitzen-shared\x00"
_TOKEN = 16


def dumps_shared(value):
    """The bytes a shared value is stored as: the mark, a token, its pickle."""
    import uuid

    return _SHARED_MAGIC + uuid.uuid4().bytes + cloudpickle.dumps(value, protocol=PROTOCOL)


# On a worker: shared values unpickled, by token, oldest first, within a budget of their
# pickles' bytes (a sweep over one large input unpickles it once per worker, not per call).
_SHARED = {}
_SHARED_BUDGET = 1 << 30
_MISSING = object()


def _input(data):
    """One input of a call, from its pickle: a shared value from this worker's cache."""
    if data[: len(_SHARED_MAGIC)] != _SHARED_MAGIC:
        return pickle.loads(data)
    start = len(_SHARED_MAGIC) + _TOKEN
    token = bytes(data[len(_SHARED_MAGIC) : start])
    value = _SHARED.get(token, _MISSING)
    if value is _MISSING:
        value = pickle.loads(memoryview(data)[start:])
        size = len(data)
        if size <= _SHARED_BUDGET:
            while _SHARED and sum(s for s, _ in _SHARED.values()) + size > _SHARED_BUDGET:
                _SHARED.pop(next(iter(_SHARED)))
            _SHARED[token] = (size, value)
        return value
    return value[1]


class Shared:
    """A value many calls take, pickled and stored once (``share``): among the arguments of
    ``run`` (or an ``Executor``'s ``submit``) it stands for the value. On a cluster the value
    crosses to each machine once and waits there in the agent's cache; on one machine each
    worker reads it from a file in shared memory. Each worker unpickles it once and hands the
    same object to every call it runs: calls must not change it. It is freed once this handle
    is gone and no task needs it."""

    __slots__ = ("_native", "_owner", "__weakref__")

    def __init__(self, native, owner):
        self._native = native
        self._owner = owner

    @property
    def nbytes(self):
        """The size of its pickle."""
        return len(self._native)

    def __repr__(self):
        return f"<blitzen.Shared of {self.nbytes} bytes>"

    def __reduce__(self):
        raise TypeError("a Shared stands for a whole argument of run(), not inside another value")


class _Slot:
    """In a pickled call: where the result of its ``index``-th input goes."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (_Slot, (self.index,))


def dumps_call_with_inputs(function, args, kwargs, owner=None):
    """``dumps_call`` for a call some of whose arguments stand for other tasks' results
    (``ResultOf``) or shared values (``Shared``, of the dispatcher ``owner``): those are
    replaced by slots; returns the payload and the inputs (task ids, and shared values' native
    handles), in slot order, or ``None`` for the inputs when there is no such argument."""
    # Plain loops: this runs for every call, and a generator costs a microsecond.
    for a in args:
        if type(a) is ResultOf or type(a) is Shared:
            break
    else:
        for v in kwargs.values():
            if type(v) is ResultOf or type(v) is Shared:
                break
        else:
            return dumps_call(function, args, kwargs), None
    inputs = []

    def slot(value):
        if isinstance(value, ResultOf):
            inputs.append(value.task_id)
            return _Slot(len(inputs) - 1)
        if isinstance(value, Shared):
            if owner is not None and value._owner is not owner:
                raise ValueError("a value shared by another dispatcher cannot be an argument here")
            inputs.append(value._native)
            return _Slot(len(inputs) - 1)
        return value

    args = tuple(slot(a) for a in args)
    kwargs = {k: slot(v) for k, v in kwargs.items()}
    return dumps_call(function, args, kwargs), (inputs or None)


# On a worker: the executors whose initializer has run in this process (see `initialized`).
_INITIALIZED = set()


class InitializerFailed(Exception):
    """A worker's initializer raised; the text is its traceback, from the worker."""


def initialized(key, setup, function, *args, **kwargs):
    """On a worker: runs ``function(*args, **kwargs)``, after the pickled
    ``(initializer, initargs)`` in ``setup`` if this process has not run executor ``key``'s
    initializer yet (once per worker process, again in a replacement)."""
    if key not in _INITIALIZED:
        try:
            initializer, initargs = pickle.loads(setup)
            initializer(*initargs)
        except BaseException:
            raise InitializerFailed(traceback.format_exc()) from None
        _remember_set_up(initializer)
        _INITIALIZED.add(key)
    return adopt(function)(*args, **kwargs)


def loads(data):
    return pickle.loads(data)


def _flush():
    # What the task printed must reach the capture files before Blitzen reads them.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# On a worker: functions unpickled, by their pickle, so that calls of one function do not
# unpickle its code again. Bounded: a worker may serve many drivers' functions.
_UNPICKLED = {}
_UNPICKLED_MAX = 256


def _function(data):
    function = _UNPICKLED.get(data)
    if function is None:
        function = adopt(pickle.loads(data))
        if len(_UNPICKLED) >= _UNPICKLED_MAX:
            _UNPICKLED.pop(next(iter(_UNPICKLED)))
        _UNPICKLED[data] = function
    return function


# On a worker: the globals of the initializers it ran that were functions of a driver's
# `__main__` (sent by value, with globals of their own; see `adopt`).
_SET_UP = []


def _remember_set_up(initializer):
    if _by_value(initializer):
        _SET_UP.append(initializer.__globals__)


def _by_value(function):
    """Whether ``function`` came by value from a driver's ``__main__``: its globals are a
    dictionary of its own, not a module's."""
    g = getattr(function, "__globals__", None)
    main = sys.modules.get("__main__")
    return (
        g is not None
        and getattr(function, "__module__", None) == "__main__"
        and g is not getattr(main, "__dict__", None)
    )


def adopt(function):
    """A function of a driver's ``__main__``, sent by value, has globals of its own: what an
    initializer of a driver's ``__main__`` set in its globals (``global MODEL``) is put in
    them, as a ``multiprocessing.Pool``'s initializer sets the globals its tasks read."""
    if not _SET_UP or not _by_value(function):
        return function
    mine = function.__globals__
    for theirs in _SET_UP:
        for name in mine.keys() & theirs.keys():
            if not name.startswith("__"):
                mine[name] = theirs[name]
    return function


def execute(payload, inputs=None, environ=None):
    """Runs one pickled call on this worker; answers ``(code, data, text)``. ``inputs``: the
    pickled results that go where the call's slots are; ``environ``: variables naming the
    devices the call holds (``CUDA_VISIBLE_DEVICES``), in ``os.environ`` while it runs."""
    if not environ:
        return _execute(payload, inputs)
    before = {key: os.environ.get(key) for key, _ in environ}
    os.environ.update(environ)
    try:
        return _execute(payload, inputs)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _execute(payload, inputs):
    try:
        data, args, kwargs = pickle.loads(payload)
        function = _function(data)
        if inputs is not None:
            values = [_input(i) for i in inputs]
            put = lambda v: values[v.index] if isinstance(v, _Slot) else v  # noqa: E731
            args = tuple(put(a) for a in args)
            kwargs = {k: put(v) for k, v in kwargs.items()}
    except BaseException as e:
        text = f"cannot unpickle the call: {type(e).__name__}: {e}"
        if isinstance(e, ModuleNotFoundError):
            text += (
                f" (the worker imports the driver's modules: start the agent with --path, a "
                f"folder holding `{e.name}`, or install it where the agent runs)"
            )
        return (BAD_CALL, None, text)
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
        return (OUT_OF_MEMORY if isinstance(e, MemoryError) else RAISED, exception, text)
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


# A worker's initializer: pickled `(function, args)` in base64, or `module:function`.
INITIALIZER_ENV = "BLITZEN_INITIALIZER"
INITIALIZER_REF_ENV = "BLITZEN_INITIALIZER_REF"


def worker_command(initializer=None, initargs=(), initializer_ref=None):
    """The command a pool runs as each worker: this interpreter, with this process's import
    path, running ``initializer(*initargs)`` (or the function that ``initializer_ref``,
    ``module:function``, names) and entering Blitzen's worker loop."""
    boot = (
        "import json, os, sys; "
        "sys.path[:] = json.loads(os.environ.pop('BLITZEN_SYS_PATH')); "
        # A streamed task's lines leave as it prints them.
        "sys.stdout.reconfigure(line_buffering=True); "
        "sys.stderr.reconfigure(line_buffering=True); "
        "from blitzen import _native, _task; _task.set_up_worker(); _native.worker_main()"
    )
    import base64
    import json

    env = [("BLITZEN_SYS_PATH", json.dumps(sys.path))]
    if initializer is not None:
        if not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__name__}")
        pickled = cloudpickle.dumps((initializer, tuple(initargs)), protocol=PROTOCOL)
        env.append((INITIALIZER_ENV, base64.b64encode(pickled).decode()))
    if initializer_ref is not None:
        env.append((INITIALIZER_REF_ENV, initializer_ref))
    return [sys.executable, "-c", boot], env


def set_up_worker():
    """In a worker, before it says it is ready: runs its pool's initializer, if it has one.
    If that raises, the worker ends with its traceback on stderr (the pool reports it, and
    gives up after a few replacements that fail alike, instead of looping)."""
    import base64
    import importlib
    import os

    pickled = os.environ.pop(INITIALIZER_ENV, None)
    ref = os.environ.pop(INITIALIZER_REF_ENV, None)
    if pickled is None and ref is None:
        return
    try:
        if pickled is not None:
            function, args = pickle.loads(base64.b64decode(pickled))
        else:
            module, _, name = ref.partition(":")
            function, args = getattr(importlib.import_module(module), name), ()
        function(*args)
        _remember_set_up(function)
    except BaseException:
        sys.stderr.write("the worker's initializer raised:\n" + traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)


_native.init(SIGNATURE, execute)
