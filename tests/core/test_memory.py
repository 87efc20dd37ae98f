"""Heap trimming: rate-limited, and a real trim returns freed pages on glibc."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from serve_app.core.memory import HeapTrimmer, trim_heap


def test_trimmer_trims_at_most_once_per_interval():
    now = [100.0]
    calls: list[float] = []
    trimmer = HeapTrimmer(10.0, trim=lambda: calls.append(now[0]) or True, clock=lambda: now[0])
    assert trimmer.after_call()  # the first call always trims
    now[0] = 105.0
    assert not trimmer.after_call()
    now[0] = 110.0
    assert trimmer.after_call()
    assert calls == [100.0, 110.0] and trimmer.trims == 2


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no libc")
def test_trim_returns_freed_small_allocations_to_the_os():
    # Many small blocks come from the heap (not mmap): freed, they stay in RSS until trimmed.
    blocks = [np.ones(16_384 // 8) for _ in range(12_000)]  # ~190 MB of 16 KiB arrays
    del blocks[:-1]  # keep the last one: the heap's top stays in use, so only trim frees
    before = _rss_mb()
    assert trim_heap()
    after = _rss_mb()
    assert after < before - 50, (before, after)
