"""Blitzen's logger, as in the original: ``get_logger``, ``set_logfile``, ``set_loglevel``,
``disable``, ``enable``.

One ``logging`` logger, ``blitzen``, receives everything: the package's own records and the
events of the Rust core (server, agent, connections), forwarded as records of
``blitzen.server``, ``blitzen.client`` and so on. It reports ``INFO`` and above by default, to
stderr — or, when the program configured logging itself (the root logger has handlers), to
those handlers. Change its level with ``set_loglevel`` so that the core's threshold follows (a
level set on the logger directly applies to the core's events that reach it, but the core's
threshold stays).
"""

import logging as _logging

_logger = _logging.getLogger("blitzen")
_handler = None
_installed = False


def _install():
    """Gives the logger its default handler and starts forwarding the core's events."""
    global _handler, _installed
    if _installed:
        return
    _installed = True
    if _logger.level == _logging.NOTSET:
        _logger.setLevel(_logging.INFO)
    # A program that configured logging itself (root handlers) gets the records there.
    if not _logger.handlers and not _logging.getLogger().handlers:
        _handler = _logging.StreamHandler()
        _handler.setFormatter(
            _logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        _logger.addHandler(_handler)
        _logger.propagate = False
    import atexit

    from blitzen import _native

    _native.set_log_threshold(_threshold())
    _native.forward_logs()
    atexit.register(_native.stop_forwarding)


def _threshold():
    if _logger.disabled:
        return 255
    return max(0, min(_logger.getEffectiveLevel(), 255))


def _sync():
    from blitzen import _native

    _native.set_log_threshold(_threshold())


def get_logger():
    """The logger every part of Blitzen logs to."""
    _install()
    return _logger


def set_logfile(filename):
    """Logs to ``filename`` (appending) instead of stderr."""
    global _handler
    _install()
    handler = _logging.FileHandler(filename)
    handler.setFormatter(_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if _handler is not None:
        _logger.removeHandler(_handler)
        _handler.close()
    _handler = handler
    _logger.addHandler(handler)
    _logger.propagate = False


def set_loglevel(level):
    """Sets the level, as ``logging`` does: ``logging.DEBUG``, ``"WARNING"``…"""
    _install()
    _logger.setLevel(level)
    _sync()


def disable():
    """Stops all logging from Blitzen."""
    _install()
    _logger.disabled = True
    _sync()


def enable():
    """Starts logging again after ``disable``."""
    _install()
    _logger.disabled = False
    _sync()


__all__ = ["get_logger", "set_logfile", "set_loglevel", "disable", "enable"]
