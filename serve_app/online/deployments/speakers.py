"""Speaker-embedding deployment: cross-request batching around :class:`BatchedEmbedder`.

Every embedding window of every diarized request is one call of :meth:`embed`, queued in
the shared :class:`~serve_app.online.batch_queue.BatchQueue` with its duration as
its cost (so windows of many requests share forward passes, and windows of a request
whose deadline passed are dropped before they cost one). The plain
:class:`~serve_app.speakers.base.BatchedEmbedder` packs the forward's windows by padded
cost and isolates a failing window. ``reconfigure`` tunes ``max_batch_audio_s`` and
``batch_wait_timeout_s`` live, as on the recognizer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import numpy as np
from ray import serve

from serve_app.config import SpeakerSettings
from serve_app.core import observability
from serve_app.core.batching import item_cost_s
from serve_app.core.errors import AsrError, InvalidRequestError
from serve_app.core.types import EmbeddingJob
from serve_app.online.batch_queue import BatchQueue, QueuedItem
from serve_app.speakers.factory import build_batched_embedder


@serve.deployment
class SpeakerDeployment:
    def __init__(self, settings: SpeakerSettings, models_dir: str) -> None:
        self._settings = settings
        self._embedder = build_batched_embedder(settings, Path(models_dir))  # load + warm-up
        batch = settings.batch
        self._queue: BatchQueue[EmbeddingJob] = BatchQueue(
            self._forward,
            capacity=batch.max_batch_audio_s,
            batch_wait_timeout_s=batch.batch_wait_timeout_s,
            on_drop=self._dropped,
        )
        self._tags = {"model": f"speakers-{self._embedder.name}"}
        self._batch_size_counts: Counter[int] = Counter()
        self._totals = {"batches": 0, "items": 0, "audio_s": 0.0, "busy_s": 0.0}
        self._errors: Counter[str] = Counter()

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_audio_s``."""
        self._queue.reconfigure(user_config, capacity_key="max_batch_audio_s")

    async def embed(self, job: EmbeddingJob) -> np.ndarray:
        """The L2-normalised embedding of one window (at most ``max_batch_audio_s`` long)."""
        capacity_s = self._queue.capacity
        if not 0 < job.duration_s <= capacity_s:
            raise InvalidRequestError(
                f"embedding window of {job.duration_s:.2f} s is outside (0, {capacity_s}] s"
            )
        cost_s = item_cost_s(
            job.duration_s,
            max_batch_audio_s=capacity_s,
            max_batch_items=self._settings.batch.max_batch_items,
        )
        return await self._queue.submit(job, cost_s)

    def _dropped(self, reason: str) -> None:
        observability.deadline_drops_total().inc(tags={**self._tags, "reason": reason})
        self._errors[f"dropped_{reason}"] += 1

    async def _forward(self, items: list[QueuedItem[EmbeddingJob]]) -> list[np.ndarray | AsrError]:
        started = time.perf_counter()
        jobs = [item.job for item in items]
        # Blocking model call in a thread: the event loop keeps forming the next batch.
        results = await asyncio.to_thread(self._embedder.embed_batch, jobs)
        elapsed_s = time.perf_counter() - started
        audio_s = sum(job.duration_s for job in jobs)
        self._totals["batches"] += 1
        self._totals["items"] += len(jobs)
        self._totals["audio_s"] += audio_s
        self._totals["busy_s"] += elapsed_s
        self._batch_size_counts[len(jobs)] += 1
        failed = sum(isinstance(r, AsrError) for r in results)
        if failed:
            self._errors["embedding_failed"] += failed
        observability.batch_items().observe(len(jobs), tags=self._tags)
        observability.forward_s().observe(elapsed_s, tags=self._tags)
        return results

    def batch_stats(self) -> dict:
        """Items per forward seen by this replica (tests, the measurement script)."""
        return {
            "num_batches": self._totals["batches"],
            "batch_size_counts": dict(sorted(self._batch_size_counts.items())),
            "items": self._totals["items"],
            "audio_s": self._totals["audio_s"],
            "busy_s": self._totals["busy_s"],
            "errors": dict(self._errors),
            "max_batch_audio_s": self._queue.capacity,
            "batch_wait_timeout_s": self._queue.batch_wait_timeout_s,
        }

    def ready(self) -> bool:
        return True
