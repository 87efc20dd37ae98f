"""Recognizer deployment: cross-request dynamic batching around a plain recognizer.

Every VAD segment of every request is one call of :meth:`transcribe`. ``@serve.batch``
collects calls until the batch holds ``max_batch_audio_s`` of audio (each item costs at
least ``max_batch_audio_s / max_batch_items``, which caps the item count too) or
``batch_wait_timeout_s`` passes. The plain :class:`BatchedRecognizer` then sorts the batch
by duration, packs forward passes by padded cost, isolates failures and restores order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ray import serve

from serve_app import observability
from serve_app.batching import item_cost_s
from serve_app.config import RecognizerSettings
from serve_app.errors import AsrError, InvalidRequestError
from serve_app.recognizers.base import ItemResult, SegmentJob, SegmentTranscript
from serve_app.recognizers.factory import build_recognizer


@dataclass(frozen=True)
class _QueuedItem:
    job: SegmentJob
    cost_s: float
    enqueued_at: float


def _batch_cost_s(items: list[_QueuedItem]) -> float:
    # Must never raise (an exception here kills Serve's batching task): plain attribute sums.
    return sum(item.cost_s for item in items)


@serve.deployment
class RecognizerDeployment:
    def __init__(self, settings: RecognizerSettings, models_dir: str) -> None:
        self._settings = settings
        self._recognizer = build_recognizer(settings, Path(models_dir))  # load + warm-up
        batch = settings.batch
        # Decorating at run time lets max_concurrent_batches come from the config.
        self._batched = serve.batch(
            max_batch_size=batch.max_batch_audio_s,
            batch_wait_timeout_s=batch.batch_wait_timeout_s,
            max_concurrent_batches=batch.max_concurrent_batches,
            batch_size_fn=_batch_cost_s,
        )(self._run_batch)
        self._forward_lock = asyncio.Lock()
        self._batch_size_counts: Counter[int] = Counter()
        self._num_batches = 0
        self._totals = {"items": 0, "audio_s": 0.0, "padded_s": 0.0, "busy_s": 0.0}
        self._tags = {"model": settings.name}

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_audio_s``."""
        if "batch_wait_timeout_s" in user_config:
            self._batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if "max_batch_audio_s" in user_config:
            self._batched.set_max_batch_size(float(user_config["max_batch_audio_s"]))

    async def transcribe(self, job: SegmentJob) -> SegmentTranscript:
        """Transcribe one segment (at most ``max_batch_audio_s`` long)."""
        batch = self._settings.batch
        if not 0 < job.duration_s <= batch.max_batch_audio_s:
            raise InvalidRequestError(
                f"segment of {job.duration_s:.2f} s is outside (0, {batch.max_batch_audio_s}] s"
            )
        cost_s = item_cost_s(
            job.duration_s,
            max_batch_audio_s=batch.max_batch_audio_s,
            max_batch_items=batch.max_batch_items,
        )
        result = await self._batched(_QueuedItem(job, cost_s, time.perf_counter()))
        if isinstance(result, AsrError):
            raise result
        return result

    async def _run_batch(self, items: list[_QueuedItem]) -> list[ItemResult]:
        started = time.perf_counter()
        for item in items:
            observability.queue_wait_s().observe(started - item.enqueued_at, tags=self._tags)
        jobs = [item.job for item in items]
        async with self._forward_lock:  # one forward at a time per replica/model
            results = await asyncio.to_thread(self._recognizer.transcribe_batch, jobs)
            stats = self._recognizer.last_stats
        self._record(items, stats, time.perf_counter() - started)
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

    def batch_stats(self) -> dict:
        """Dynamic batch sizes (items) seen by this replica, for tests and the load tool."""
        return {
            "num_batches": self._num_batches,
            "batch_size_counts": dict(sorted(self._batch_size_counts.items())),
            **self._totals,
        }

    def ready(self) -> bool:
        return True
