"""The coalescer's background items (live partials): they never ride in a forward with
normal items, run in small forwards when nothing else waits, and a newer one with the same
key replaces a queued one."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.core.errors import DeadlineExceededError
from serve_app.core.types import SegmentJob
from serve_app.online.batch_queue import Coalescer, QueuedItem


def item(seconds: float, *, priority: int = 0, key: str | None = None, tag: str = "") -> QueuedItem:
    job = SegmentJob(
        np.zeros(int(seconds * 16000), np.float32),
        request_id=tag,
        priority=priority,
        coalesce_key=key,
    )
    return QueuedItem(job, seconds, 0.0)


def while_busy(later: list[QueuedItem], **coalescer_options) -> tuple[list[list[str]], list]:
    """The forwards a coalescer runs, and each item's result, when ``later`` arrive one by
    one while the model is busy with a first item (``busy``)."""

    async def main():
        forwards: list[list[str]] = []
        gate = asyncio.Event()

        async def run(items):
            forwards.append([i.job.request_id for i in items])
            if len(forwards) == 1:
                await gate.wait()  # the model is busy while the next items arrive
            return [i.job.request_id for i in items]

        coalescer = Coalescer(run, **coalescer_options)
        first = asyncio.ensure_future(coalescer.submit([item(1.0, tag="busy")]))
        waiting = []
        for queued in later:
            await asyncio.sleep(0)
            waiting.append(asyncio.ensure_future(coalescer.submit([queued])))
        await asyncio.sleep(0)
        gate.set()
        await first
        return forwards, [(await w)[0] for w in waiting]

    return asyncio.run(main())


def test_background_items_wait_for_normal_ones_and_run_in_small_forwards():
    later = [
        item(4.0, priority=1, tag="p1"),
        item(6.0, tag="f1"),
        item(3.0, tag="f2"),
        item(1.0, priority=1, tag="p2"),
    ]
    forwards, _ = while_busy(later, capacity_s=10.0)
    # f1 and f2 first, alone; then the partials, at most a quarter of the capacity (2.5 s)
    # per forward (the first is always taken, however long).
    assert forwards == [["busy"], ["f1", "f2"], ["p1"], ["p2"]]


def test_a_newer_item_with_the_same_key_replaces_the_queued_one():
    drops: list[str] = []
    later = [
        item(1.0, priority=1, key="s/i", tag="old"),
        item(2.0, priority=1, key="s/i", tag="new"),
    ]
    forwards, results = while_busy(later, capacity_s=10.0, on_drop=drops.append)
    assert forwards == [["busy"], ["new"]]
    assert isinstance(results[0], DeadlineExceededError) and results[1] == "new"
    assert drops == ["superseded"]


def test_background_items_run_at_once_on_an_idle_model():
    async def main():
        async def run(items):
            return [i.job.request_id for i in items]

        return await Coalescer(run, capacity_s=10.0).submit([item(1.0, priority=1, tag="p")])

    assert asyncio.run(main()) == ["p"]


def test_the_background_capacity_bounds_a_partials_forward():
    later = [item(30.0, priority=1, tag=f"p{i}") for i in range(3)]
    forwards, _ = while_busy(later, capacity_s=100.0, background_capacity_s=30.0)
    # One 30 s item per forward of partials (a quarter of 100 s would have taken three).
    assert forwards == [["busy"], ["p0"], ["p1"], ["p2"]]


def test_foreground_waiting_is_set_while_a_normal_item_waits_behind_a_background_forward():
    """The flag a partials-only forward polls to yield: off while only partials run, on
    from the moment a normal item is queued, off again once that item is taken."""

    async def main():
        coalescer = Coalescer(lambda items: None, capacity_s=10.0)
        seen: list[tuple[str, bool]] = []
        gate = asyncio.Event()

        async def run(items):
            seen.append((items[0].job.request_id, coalescer.foreground_waiting.is_set()))
            if items[0].job.request_id == "p1":
                await gate.wait()
            return [i.job.request_id for i in items]

        coalescer._run = run
        partial = asyncio.ensure_future(coalescer.submit([item(2.0, priority=1, tag="p1")]))
        await asyncio.sleep(0.01)
        before = coalescer.foreground_waiting.is_set()
        final = asyncio.ensure_future(coalescer.submit([item(1.0, tag="f1")]))
        await asyncio.sleep(0.01)
        during = coalescer.foreground_waiting.is_set()
        gate.set()
        await partial, await final
        return before, during, seen, coalescer.foreground_waiting.is_set()

    before, during, seen, after = asyncio.run(main())
    assert (before, during, after) == (False, True, False)
    assert seen == [("p1", False), ("f1", False)]  # cleared when f1 was taken


def test_a_short_request_behind_a_long_ones_items_rides_in_the_next_forward():
    """Rounds across requests: a short file's item queued in the replica behind a long
    file's segments waited for all of them (first come, first served)."""
    later = [item(1.0, tag="long") for _ in range(6)] + [item(1.0, tag="short")]
    forwards, _ = while_busy(later, capacity_s=2.0)
    assert forwards[1] == ["long", "short"]
    assert forwards[2:] == [["long", "long"], ["long", "long"], ["long"]]
