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


def span(seconds):
    """Naps; returns this worker's pid and when the nap began and ended."""
    began = time.time()
    time.sleep(seconds)
    return os.getpid(), began, time.time()


def hog(mib):
    """Holds `mib` MiB for a moment; returns how many bytes it held."""
    held = bytearray(mib << 20)
    return len(held)
