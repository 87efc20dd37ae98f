"""Cross-request dynamic batching of one replica: the machinery every batched stage shares.

Every item of every request (a recognizer segment, a speaker-embedding window, a
punctuation window) is one call of the deployment's method, which hands it to a
:class:`BatchQueue`. Two layers batch:

1. ``@serve.batch`` collects calls for up to ``batch_wait_timeout_s`` into a batch whose
   capacity is in the stage's cost unit (audio seconds, tokens), each item costing what
   the deployment says (:func:`serve_app.core.batching.item_cost_s` also caps the item count).
2. Serve forms each batch when its wait ends, whether or not the model is free: under load
   it freezes many small batches behind its concurrency semaphore (measured: 16
   concurrent requests ran as 16 batches of one). So batches are not run directly; they
   are handed to a :class:`Coalescer` that, while a forward pass runs, merges everything
   that arrives into the next forward, up to the same capacity. An idle model starts at
   once; a busy one gets full batches.

Work nobody waits for any more (the caller's call was cancelled, or its request's
``deadline_unix_s`` passed) is dropped before it costs a forward pass. The plain stage
behind the queue (a :class:`~serve_app.core.batching.BatchedRunner`) then sorts, packs by
padded cost, splits on out-of-memory and isolates failures.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ray import serve

from serve_app.core.errors import AsrError, DeadlineExceededError

logger = logging.getLogger(__name__)

# Serve may form this many batches while earlier ones wait for the model; they are merged
# by the coalescer, so formation must never block on the model.
MAX_FORMED_BATCHES = 64
# A forward of background items (live partials) only, by default at most this share of
# the capacity: a file segment or a final that arrives meanwhile waits for a small one.
BACKGROUND_SHARE = 0.25


class HasDeadline(Protocol):
    @property
    def deadline_unix_s(self) -> float | None: ...


JobT = TypeVar("JobT", bound=HasDeadline)


@dataclass(eq=False)
class QueuedItem(Generic[JobT]):
    job: JobT
    cost_s: float
    enqueued_at: float
    # Set when the caller's call was cancelled (client gone, ingress deadline): the item
    # is then dropped from the queue instead of costing a forward pass.
    cancelled: bool = False

    def expired(self, now_unix_s: float) -> bool:
        deadline = self.job.deadline_unix_s
        return deadline is not None and now_unix_s >= deadline

    @property
    def background(self) -> bool:
        """A low-priority item (a live partial): it only fills room left in a forward."""
        return getattr(self.job, "priority", 0) > 0

    @property
    def coalesce_key(self) -> str | None:
        return getattr(self.job, "coalesce_key", None)


def batch_cost_s(items: list[QueuedItem]) -> float:
    # Must never raise (an exception here kills Serve's batching task): plain attribute sums.
    return sum(item.cost_s for item in items)


# One forward over queued items: one result (or that item's own AsrError) per item.
RunFn = Callable[[list[QueuedItem[Any]]], Awaitable[list[Any]]]


def _fair_order(waiting: list[tuple[QueuedItem, Any]]) -> list[tuple[QueuedItem, Any]]:
    """Items in rounds across requests: the first waiting item of every request (in
    arrival order), then every request's second, ... A short file's item that reaches the
    replica behind a long file's queued segments rides in the next forward, not after all
    of them. Only what the replica holds is ordered: calls over its max_ongoing_requests
    wait in Serve's router, first come first served. Items without a request id are each
    their own request (arrival order among them)."""
    seen: dict[object, int] = {}
    ranked = []
    for index, pair in enumerate(waiting):
        key = getattr(pair[0].job, "request_id", None) or pair[0]
        rank = seen.get(key, 0)
        seen[key] = rank + 1
        ranked.append((rank, index, pair))
    ranked.sort(key=lambda entry: entry[:2])
    return [pair for _, _, pair in ranked]


class Coalescer:
    """One forward pass at a time; what arrives meanwhile joins the next, up to capacity."""

    def __init__(
        self,
        run: RunFn,
        capacity_s: float,
        *,
        on_drop: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        background_capacity_s: float | None = None,
        foreground_waiting: threading.Event | None = None,
    ) -> None:
        self._run = run
        self.capacity_s = capacity_s
        # Set while a foreground item waits (read by the model's thread: a forward of
        # background items only may stop early and yield to it).
        self.foreground_waiting = foreground_waiting or threading.Event()
        self.background_capacity_s = background_capacity_s
        self._on_drop = on_drop
        self._clock = clock
        self._pending: deque[tuple[QueuedItem, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, items: list[QueuedItem]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item in items:
            if item.coalesce_key is not None:
                self._supersede(item.coalesce_key)
        if any(not item.background for item in items):
            self.foreground_waiting.set()
        self._pending.extend(zip(items, futures))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def _supersede(self, key: str) -> None:
        """A newer item with ``key`` arrived: a queued older one is dropped unrun."""
        for item, future in self._pending:
            if item.coalesce_key == key and not future.done():
                item.cancelled = True
                future.set_result(DeadlineExceededError("replaced by a newer item"))
                self._dropped("superseded")

    def _take(self) -> list[tuple[QueuedItem, asyncio.Future]]:
        """The next forward: queued items up to the capacity, in rounds across requests
        (:func:`_fair_order`; an item that does not fit ends it). Background items (live
        partials) never ride with them (on a CPU every item costs the forward time), and
        run only when nothing else waits, up to ``background_capacity_s`` (at least one)."""
        batch: list[tuple[QueuedItem, asyncio.Future]] = []
        waiting: list[tuple[QueuedItem, asyncio.Future]] = []  # foreground, arrival order
        background: list[tuple[QueuedItem, asyncio.Future]] = []
        kept: list[tuple[QueuedItem, asyncio.Future]] = []
        used_s = 0.0
        full = False
        now_unix_s = self._clock()
        while self._pending:
            item, future = self._pending.popleft()
            if future.done() or item.cancelled:  # cancelled: the client went away
                if not future.done():
                    future.set_result(DeadlineExceededError("the request was cancelled"))
                    self._dropped("cancelled")
                elif not item.cancelled:
                    self._dropped("cancelled")
                continue
            if item.expired(now_unix_s):  # its request already answered 504: skip the work
                future.set_result(
                    DeadlineExceededError("the request's deadline passed before its item ran")
                )
                self._dropped("deadline")
                continue
            (background if item.background else waiting).append((item, future))
        for item, future in _fair_order(waiting):
            if full or (batch and used_s + item.cost_s > self.capacity_s):
                full = True
            else:
                batch.append((item, future))
                used_s += item.cost_s
        taken = {id(item) for item, _ in batch}
        kept.extend(pair for pair in waiting if id(pair[0]) not in taken)  # arrival order
        room_s = self.background_capacity_s or self.capacity_s * BACKGROUND_SHARE
        only_background = not batch
        for item, future in background:
            if only_background and (not batch or used_s + item.cost_s <= room_s):
                batch.append((item, future))
                used_s += item.cost_s
            else:
                kept.append((item, future))
        self._pending.extend(kept)
        if not any(not item.background for item, _ in kept):
            self.foreground_waiting.clear()
        return batch

    def _dropped(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._take():
                results: list[Any]
                try:
                    results = list(await self._run([item for item, _ in batch]))
                except Exception as exc:
                    logger.exception("forward pass failed as a whole")
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, Exception) and not isinstance(result, AsrError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)


class BatchQueue(Generic[JobT]):
    """``@serve.batch`` formation + :class:`Coalescer` in one replica of a batched stage.

    ``run`` receives the queued items of one forward (their ``enqueued_at`` gives the queue
    wait) and returns one result or one :class:`AsrError` per item; :meth:`submit` returns
    the result or raises the item's error. ``capacity`` and ``batch_wait_timeout_s`` can be
    changed live (a deployment's ``reconfigure``).
    """

    def __init__(
        self,
        run: RunFn,
        *,
        capacity: float,
        batch_wait_timeout_s: float,
        on_drop: Callable[[str], None] | None = None,
        background_capacity_s: float | None = None,
    ) -> None:
        self._on_drop = on_drop
        # Decorating at run time lets the capacity and wait come from the config. The
        # capacity is a float (seconds or tokens): Serve only compares it with sums of
        # batch_size_fn.
        self._batched = serve.batch(  # type: ignore[call-overload]
            max_batch_size=capacity,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=MAX_FORMED_BATCHES,
            batch_size_fn=batch_cost_s,
        )(self._submit)
        self.foreground_waiting = threading.Event()
        self._coalescer = Coalescer(
            run,
            capacity,
            on_drop=on_drop,
            background_capacity_s=background_capacity_s,
            foreground_waiting=self.foreground_waiting,
        )

    @property
    def capacity(self) -> float:
        return float(self._batched._get_max_batch_size())

    @property
    def batch_wait_timeout_s(self) -> float:
        return float(self._batched._get_batch_wait_timeout_s())

    def set_capacity(self, capacity: float) -> None:
        self._batched.set_max_batch_size(capacity)
        self._coalescer.capacity_s = capacity

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self._batched.set_batch_wait_timeout_s(seconds)

    def reconfigure(self, user_config: dict, *, capacity_key: str) -> None:
        """Apply ``batch_wait_timeout_s`` and ``capacity_key`` from a user_config."""
        if "batch_wait_timeout_s" in user_config:
            self.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if capacity_key in user_config:
            self.set_capacity(float(user_config[capacity_key]))

    async def submit(self, job: JobT, cost_s: float) -> Any:
        """Queue one item; its result, or raise its own :class:`AsrError`."""
        if job.deadline_unix_s is not None and time.time() >= job.deadline_unix_s:
            if self._on_drop is not None:
                self._on_drop("deadline")
            raise DeadlineExceededError("the request's deadline passed before its item ran")
        # An item larger than the capacity (tuned down live below the longest segment a
        # replica admits) runs alone instead of failing with Serve's "Size of item is
        # greater than max_batch_size": it is charged the whole capacity.
        cost_s = min(cost_s, self.capacity)
        item: QueuedItem[JobT] = QueuedItem(job, cost_s, time.perf_counter())
        if not item.background:  # known now, not only once Serve's batch is formed
            self.foreground_waiting.set()
        try:
            result = await self._batched(item)
        except asyncio.CancelledError:
            # Serve cancels this call when the caller cancels it (client disconnect,
            # deadline); the item may already sit in the coalescer: mark it to be skipped.
            item.cancelled = True
            raise
        if isinstance(result, AsrError):
            raise result
        return result

    async def _submit(self, items: list[QueuedItem]) -> list[Any]:
        return await self._coalescer.submit(items)
