"""Give freed heap memory back to the OS (glibc ``malloc_trim``), rate-limited.

A replica that handles whole files (the VAD: fbank features and activations of a
2-minute file are tens of MB per call) frees that memory after each call, but glibc keeps
the freed pages mapped for reuse, so its RSS rises to the high-water mark of the busiest
moment and stays there; with many arenas (one per thread by default) it keeps rising
(docs/BENCHMARKS.md, "Soak"). ``MALLOC_ARENA_MAX=2`` bounds the arenas; this returns the
freed pages, so RSS follows the live data instead of the past peak. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

_TRIM: Callable[[int], int] | None = None
_LOADED = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _TRIM, _LOADED
    if not _LOADED:
        _LOADED = True
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl)
            _TRIM = None
    return _TRIM


def trim_heap() -> bool:
    """``malloc_trim(0)``: True when memory was returned to the OS."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))


class HeapTrimmer:
    """Trims the heap after a call ends, at most once per ``min_interval_s``.

    ``after_call`` is cheap when it does not trim (a clock read under a lock); the trim
    itself takes a few milliseconds per hundred MB of heap and runs in the caller's
    thread, so call it from a worker thread, not an event loop.
    """

    def __init__(
        self,
        min_interval_s: float = 10.0,
        *,
        trim: Callable[[], bool] = trim_heap,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self._trim = trim
        self._clock = clock
        self._lock = threading.Lock()
        self._last = float("-inf")
        self.trims = 0

    def due(self) -> bool:
        """Whether :meth:`after_call` would trim now (lets an event loop skip a thread hop)."""
        return self._clock() - self._last >= self.min_interval_s

    def after_call(self) -> bool:
        """Trim if the last trim is at least ``min_interval_s`` old; True if it trimmed."""
        with self._lock:
            now = self._clock()
            if now - self._last < self.min_interval_s:
                return False
            self._last = now
        self._trim()
        self.trims += 1
        return True
