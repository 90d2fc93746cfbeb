"""Peak memory of one call: the increase of the process's resident set over the call.

The high-water mark VmHWM is reset through /proc/self/clear_refs; the resident set before
the call is read after freed heap memory was returned to the system. The figure includes
the call's outputs. None where /proc does not offer this (not Linux).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["PeakMemory"]


def _read_status_kb(keys) -> dict:
    """The /proc/self/status entries named in keys, in kB."""
    out = {}
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])
    return out


class PeakMemory:
    """Peak resident-set increase of one call, on Linux.

    measure(fn) frees what it can first (gc, then malloc_trim so that memory freed by
    earlier calls is not silently reused), reads VmRSS, resets the high-water mark by
    writing "5" to /proc/self/clear_refs, calls fn, then reads VmHWM. The difference is
    the most memory the call held at any moment beyond what was resident before it,
    outputs included, at page granularity. ``available`` is False where the kernel
    offers no resettable high-water mark; measure then returns (None, result).
    """

    method = "VmHWM - VmRSS before the call; VmHWM reset via /proc/self/clear_refs"

    def __init__(self):
        self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            self._trim = trim
        except (OSError, AttributeError, TypeError):
            self._trim = None
        self.available = self._probe()

    def _reset(self):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")

    def _probe(self) -> bool:
        try:
            self._reset()
            kb = _read_status_kb(("VmHWM", "VmRSS"))
        except (OSError, ValueError, IndexError):
            return False
        return "VmHWM" in kb and "VmRSS" in kb

    def _release(self):
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def measure(self, fn):
        """Returns (peak increase in bytes or None, fn's result)."""
        if not self.available:
            return None, fn()
        self._release()
        try:
            before = _read_status_kb(("VmRSS",))["VmRSS"]
            self._reset()
        except (OSError, KeyError, ValueError, IndexError):
            return None, fn()
        result = fn()
        try:
            peak = _read_status_kb(("VmHWM",))["VmHWM"]
        except (OSError, KeyError, ValueError, IndexError):
            return None, result
        return max(peak - before, 0) * 1024, result
