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


def test_background_items_wait_for_normal_ones_and_run_in_small_forwards():
    async def main():
        forwards: list[list[str]] = []
        gate = asyncio.Event()

        async def run(items):
            forwards.append([i.job.request_id for i in items])
            if len(forwards) == 1:
                await gate.wait()  # the model is busy while the next items arrive
            return [i.job.request_id for i in items]

        coalescer = Coalescer(run, capacity_s=10.0)
        first = asyncio.ensure_future(coalescer.submit([item(1.0, tag="busy")]))
        await asyncio.sleep(0)
        waiting = [
            asyncio.ensure_future(coalescer.submit([item(4.0, priority=1, tag="p1")])),
            asyncio.ensure_future(coalescer.submit([item(6.0, tag="f1")])),
            asyncio.ensure_future(coalescer.submit([item(3.0, tag="f2")])),
            asyncio.ensure_future(coalescer.submit([item(1.0, priority=1, tag="p2")])),
        ]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *waiting)
        return forwards

    forwards = asyncio.run(main())
    # f1 and f2 first, alone; then the partials, at most a quarter of the capacity (2.5 s)
    # per forward (the first is always taken, however long).
    assert forwards == [["busy"], ["f1", "f2"], ["p1"], ["p2"]]


def test_a_newer_item_with_the_same_key_replaces_the_queued_one():
    async def main():
        forwards: list[list[str]] = []
        gate = asyncio.Event()
        drops: list[str] = []

        async def run(items):
            forwards.append([i.job.request_id for i in items])
            if len(forwards) == 1:
                await gate.wait()
            return [i.job.request_id for i in items]

        coalescer = Coalescer(run, capacity_s=10.0, on_drop=drops.append)
        first = asyncio.ensure_future(coalescer.submit([item(1.0, tag="busy")]))
        await asyncio.sleep(0)
        old = asyncio.ensure_future(coalescer.submit([item(1.0, priority=1, key="s/i", tag="old")]))
        await asyncio.sleep(0)
        new = asyncio.ensure_future(coalescer.submit([item(2.0, priority=1, key="s/i", tag="new")]))
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, old, new)
        return forwards, results, drops

    forwards, results, drops = asyncio.run(main())
    assert forwards == [["busy"], ["new"]]
    assert isinstance(results[1][0], DeadlineExceededError) and results[2] == ["new"]
    assert drops == ["superseded"]


def test_background_items_run_at_once_on_an_idle_model():
    async def main():
        async def run(items):
            return [i.job.request_id for i in items]

        return await Coalescer(run, capacity_s=10.0).submit([item(1.0, priority=1, tag="p")])

    assert asyncio.run(main()) == ["p"]


def test_the_background_capacity_bounds_a_partials_forward():
    async def main():
        forwards: list[list[str]] = []
        gate = asyncio.Event()

        async def run(items):
            forwards.append([i.job.request_id for i in items])
            if len(forwards) == 1:
                await gate.wait()
            return [i.job.request_id for i in items]

        coalescer = Coalescer(run, capacity_s=100.0, background_capacity_s=30.0)
        first = asyncio.ensure_future(coalescer.submit([item(1.0, tag="busy")]))
        await asyncio.sleep(0)
        partials = [
            asyncio.ensure_future(coalescer.submit([item(30.0, priority=1, tag=f"p{i}")]))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *partials)
        return forwards

    # One 30 s item per forward of partials (a quarter of 100 s would have taken three).
    assert asyncio.run(main()) == [["busy"], ["p0"], ["p1"], ["p2"]]
