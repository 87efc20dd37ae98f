"""Recognizer deployment: cross-request dynamic batching around a plain recognizer.

Every VAD segment of every request is one call of :meth:`transcribe`. Two layers batch:

1. ``@serve.batch`` collects calls for up to ``batch_wait_timeout_s`` into a batch whose
   capacity is in audio seconds (each item costs at least
   ``max_batch_audio_s / max_batch_items``, which caps the item count with the same one
   number).
2. Serve forms each batch when its wait ends, whether or not the model is free: under load
   it freezes many small batches behind its concurrency semaphore (measured: 16
   concurrent requests ran as 16 batches of one). So batches are not run directly; they
   are handed to a :class:`_Coalescer` that, while a forward pass runs, merges everything
   that arrives into the next forward, up to the same capacity. An idle model starts at
   once; a busy one gets full batches.

The plain :class:`BatchedRecognizer` then sorts the forward's items by duration, packs
passes by padded cost, isolates failures and restores order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ray import serve

from serve_app import observability, system
from serve_app.batching import item_cost_s
from serve_app.config import RecognizerSettings
from serve_app.errors import AsrError, DeadlineExceededError, InvalidRequestError
from serve_app.recognizers.base import ItemResult, SegmentJob, SegmentTranscript
from serve_app.recognizers.factory import build_recognizer

logger = logging.getLogger(__name__)

# Serve may form this many batches while earlier ones wait for the model; they are merged
# by the coalescer, so formation must never block on the model.
_MAX_FORMED_BATCHES = 64


@dataclass(eq=False)
class _QueuedItem:
    job: SegmentJob
    cost_s: float
    enqueued_at: float
    # Set when the caller's call was cancelled (client gone, ingress deadline): the item
    # is then dropped from the queue instead of costing a forward pass.
    cancelled: bool = False

    def expired(self, now_unix_s: float) -> bool:
        deadline = self.job.deadline_unix_s
        return deadline is not None and now_unix_s >= deadline


def _batch_cost_s(items: list[_QueuedItem]) -> float:
    # Must never raise (an exception here kills Serve's batching task): plain attribute sums.
    return sum(item.cost_s for item in items)


RunFn = Callable[[list[_QueuedItem]], Awaitable[list[ItemResult]]]


class _Coalescer:
    """One forward pass at a time; what arrives meanwhile joins the next, up to capacity."""

    def __init__(
        self,
        run: RunFn,
        capacity_s: float,
        *,
        on_drop: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._run = run
        self.capacity_s = capacity_s
        self._on_drop = on_drop
        self._clock = clock
        self._pending: deque[tuple[_QueuedItem, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, items: list[_QueuedItem]) -> list[ItemResult]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[tuple[_QueuedItem, asyncio.Future]]:
        batch: list[tuple[_QueuedItem, asyncio.Future]] = []
        used_s = 0.0
        now_unix_s = self._clock()
        while self._pending:
            item, future = self._pending[0]
            if future.done() or item.cancelled:  # cancelled: the client went away
                self._pending.popleft()
                if not future.done():
                    future.set_result(DeadlineExceededError("the request was cancelled"))
                self._dropped("cancelled")
                continue
            if item.expired(now_unix_s):  # its request already answered 504: skip the work
                self._pending.popleft()
                future.set_result(
                    DeadlineExceededError("the request's deadline passed before its segment ran")
                )
                self._dropped("deadline")
                continue
            if batch and used_s + item.cost_s > self.capacity_s:
                break
            batch.append(self._pending.popleft())
            used_s += item.cost_s
        return batch

    def _dropped(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._take():
                results: list[ItemResult | Exception]
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


@serve.deployment
class RecognizerDeployment:
    def __init__(self, settings: RecognizerSettings, models_dir: str) -> None:
        self._settings = settings
        self._recognizer = build_recognizer(settings, Path(models_dir))  # load + warm-up
        batch = settings.batch
        # Decorating at run time lets the capacity and wait come from the config. The
        # capacity is in seconds (a float): Serve only compares it with batch_size_fn sums.
        self._batched = serve.batch(  # type: ignore[call-overload]
            max_batch_size=batch.max_batch_audio_s,
            batch_wait_timeout_s=batch.batch_wait_timeout_s,
            max_concurrent_batches=_MAX_FORMED_BATCHES,
            batch_size_fn=_batch_cost_s,
        )(self._submit)
        self._coalescer = _Coalescer(self._forward, batch.max_batch_audio_s, on_drop=self._dropped)
        self._batch_size_counts: Counter[int] = Counter()
        self._num_batches = 0
        self._totals = {"items": 0, "audio_s": 0.0, "padded_s": 0.0, "busy_s": 0.0}
        self._tags = {"model": settings.name}
        self._errors: Counter[str] = Counter()
        self._stats_pusher = self._start_stats_pusher()

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_audio_s``."""
        self._last_user_config: dict | None = dict(user_config)
        if "batch_wait_timeout_s" in user_config:
            self._batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if "max_batch_audio_s" in user_config:
            capacity_s = float(user_config["max_batch_audio_s"])
            self._batched.set_max_batch_size(capacity_s)
            self._coalescer.capacity_s = capacity_s

    async def transcribe(self, job: SegmentJob) -> SegmentTranscript:
        """Transcribe one segment (at most ``max_batch_audio_s`` long)."""
        batch = self._settings.batch
        if not 0 < job.duration_s <= batch.max_batch_audio_s:
            raise InvalidRequestError(
                f"segment of {job.duration_s:.2f} s is outside (0, {batch.max_batch_audio_s}] s"
            )
        self._recognizer.validate(job.options)  # a 400 for this request, not a failed batch
        cost_s = item_cost_s(
            job.duration_s,
            max_batch_audio_s=batch.max_batch_audio_s,
            max_batch_items=batch.max_batch_items,
        )
        if job.deadline_unix_s is not None and time.time() >= job.deadline_unix_s:
            self._dropped("deadline")
            raise DeadlineExceededError("the request's deadline passed before its segment ran")
        item = _QueuedItem(job, cost_s, time.perf_counter())
        try:
            result = await self._batched(item)
        except asyncio.CancelledError:
            # Serve cancels this call when the ingress cancels it (client disconnect,
            # deadline); the item may already sit in the coalescer: mark it to be skipped.
            item.cancelled = True
            raise
        if isinstance(result, AsrError):
            raise result
        return result

    def _dropped(self, reason: str) -> None:
        observability.deadline_drops_total().inc(tags={**self._tags, "reason": reason})
        self._errors[f"dropped_{reason}"] += 1

    async def _submit(self, items: list[_QueuedItem]) -> list[ItemResult]:
        return await self._coalescer.submit(items)

    async def _forward(self, items: list[_QueuedItem]) -> list[ItemResult]:
        started = time.perf_counter()
        for item in items:
            observability.queue_wait_s().observe(started - item.enqueued_at, tags=self._tags)
        jobs = [item.job for item in items]
        # The model call is blocking: a thread keeps the replica's event loop (health
        # checks, new arrivals joining the next batch) responsive meanwhile.
        results = await asyncio.to_thread(self._recognizer.transcribe_batch, jobs)
        self._record(items, self._recognizer.last_stats, time.perf_counter() - started)
        return results

    def _record(self, items: list[_QueuedItem], stats, elapsed_s: float) -> None:
        self._num_batches += 1
        self._batch_size_counts[len(items)] += 1
        audio_s = sum(item.job.duration_s for item in items)
        self._totals["items"] += len(items)
        self._totals["audio_s"] += stats.real_audio_s
        self._totals["padded_s"] += stats.padded_audio_s
        self._totals["busy_s"] += elapsed_s
        observability.batch_items().observe(len(items), tags=self._tags)
        observability.batch_audio_s().observe(audio_s, tags=self._tags)
        observability.padding_efficiency().observe(stats.padding_efficiency, tags=self._tags)
        observability.forward_s().observe(elapsed_s, tags=self._tags)
        observability.audio_processed_s().inc(audio_s, tags=self._tags)
        if stats.num_failed_items:
            observability.errors_total().inc(
                stats.num_failed_items, tags={"kind": "recognition_failed", "stage": "recognize"}
            )
            self._errors["recognition_failed"] += stats.num_failed_items

    def batch_stats(self) -> dict:
        """Batch sizes (items per forward) seen by this replica, for tests and the load tool."""
        return {
            "num_batches": self._num_batches,
            "batch_size_counts": dict(sorted(self._batch_size_counts.items())),
            **self._totals,
        }

    def replica_stats(self) -> dict:
        """This replica's totals, errors by kind, batch settings in force and GPU memory,
        as the stats pusher reports them to the app's board (serve_app/system.py)."""
        return {
            **self.batch_stats(),
            "errors": dict(self._errors),
            "max_batch_audio_s": float(self._batched._get_max_batch_size()),
            "batch_wait_timeout_s": float(self._batched._get_batch_wait_timeout_s()),
            "configured": self._configured_batch(),
            **system.gpu_memory(),
        }

    def _configured_batch(self) -> dict:
        """What the deployment's config says (args, and the last user_config from Serve)."""
        batch = self._settings.batch
        user_config = getattr(self, "_last_user_config", None) or {}
        return {
            "args": {key: float(getattr(batch, key)) for key in system.TUNABLE},
            "user_config": {k: user_config[k] for k in system.TUNABLE if k in user_config},
        }

    def _apply_tuning(self, settings: dict) -> None:
        """The board's tuning, through reconfigure, without counting it as config."""
        configured = getattr(self, "_last_user_config", None)
        self.reconfigure(settings)
        self._last_user_config = configured

    def _start_stats_pusher(self) -> system.StatsPusher | None:
        """Report to the app's board once a second (outside Serve, e.g. a unit test: off)."""
        try:
            context = serve.get_replica_context()
            app_name = context.app_name
            replica_id = str(context.replica_id.unique_id)
        except Exception:
            return None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        return system.StatsPusher(
            app_name=app_name,
            model=self._settings.name,
            replica_id=replica_id,
            stats=self.replica_stats,
            apply=self._apply_tuning,
            loop=loop,
        ).start()

    def ready(self) -> bool:
        return True
