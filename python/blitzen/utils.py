"""The original's helpers."""

from blitzen import _native


def get_local_ip():
    """This machine's address on its default route (no packet is sent), or ``127.0.0.1``."""
    return _native.local_ip()


__all__ = ["get_local_ip"]
