"""Recognizer deployment: cross-request dynamic batching around a plain recognizer.

Every VAD segment of every request is one call of :meth:`transcribe`, queued in the shared
:class:`~serve_app.online.batch_queue.BatchQueue` (``@serve.batch`` formation by audio
seconds + a coalescer that keeps one forward pass running and merges what arrives into the
next). The plain :class:`BatchedRecognizer` then sorts the forward's items by duration,
packs passes by padded cost, isolates failures and restores order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

from ray import serve

from serve_app.config import RecognizerSettings
from serve_app.core import observability
from serve_app.core.batching import item_cost_s
from serve_app.core.errors import InvalidRequestError
from serve_app.core.memory import HeapTrimmer
from serve_app.core.types import ItemResult, SegmentJob, SegmentTranscript
from serve_app.online import system
from serve_app.online.batch_queue import BatchQueue, QueuedItem
from serve_app.recognizers.factory import build_recognizer

logger = logging.getLogger(__name__)

# Kept for callers that imported them from here before the queue became shared.
_QueuedItem = QueuedItem


@serve.deployment
class RecognizerDeployment:
    def __init__(self, settings: RecognizerSettings, models_dir: str) -> None:
        self._settings = settings
        self._recognizer = build_recognizer(settings, Path(models_dir))  # load + warm-up
        batch = settings.batch
        self._queue: BatchQueue[SegmentJob] = BatchQueue(
            self._forward,
            capacity=batch.max_batch_audio_s,
            batch_wait_timeout_s=batch.batch_wait_timeout_s,
            on_drop=self._dropped,
            background_capacity_s=batch.background_batch_audio_s,
        )
        backend = self._recognizer.backend
        if hasattr(backend, "should_yield"):
            # A forward of live partials only stops at its next step when a final or a
            # file segment arrives (the backend returns what it decoded so far).
            backend.should_yield = self._queue.foreground_waiting.is_set
        self._batch_size_counts: Counter[int] = Counter()
        self._num_batches = 0
        self._totals = {"items": 0, "audio_s": 0.0, "padded_s": 0.0, "busy_s": 0.0}
        self._tags = {"model": settings.name}
        self._errors: Counter[str] = Counter()
        self._trimmer = HeapTrimmer()
        self._stats_pusher = self._start_stats_pusher()

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_audio_s``."""
        self._last_user_config: dict | None = dict(user_config)
        self._queue.reconfigure(user_config, capacity_key="max_batch_audio_s")

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
        return await self._queue.submit(job, cost_s)

    def _dropped(self, reason: str) -> None:
        observability.deadline_drops_total().inc(tags={**self._tags, "reason": reason})
        self._errors[f"dropped_{reason}"] += 1

    async def _forward(self, items: list[QueuedItem[SegmentJob]]) -> list[ItemResult]:
        started = time.perf_counter()
        for item in items:
            observability.queue_wait_s().observe(started - item.enqueued_at, tags=self._tags)
        jobs = [item.job for item in items]
        # The model call is blocking: a thread keeps the replica's event loop (health
        # checks, new arrivals joining the next batch) responsive meanwhile.
        results = await asyncio.to_thread(self._transcribe_and_trim, jobs)
        self._record(items, self._recognizer.last_stats, time.perf_counter() - started)
        return results

    def _transcribe_and_trim(self, jobs: list[SegmentJob]) -> list[ItemResult]:
        try:
            return self._recognizer.transcribe_batch(jobs)
        finally:
            # A forward's activations are freed after it: give the pages back now and
            # then (serve_app.core.memory), so RSS follows the live data, not the last peak.
            self._trimmer.after_call()

    def _record(self, items: list[QueuedItem[SegmentJob]], stats, elapsed_s: float) -> None:
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
        as the stats pusher reports them to the app's board (serve_app/online/system.py)."""
        return {
            **self.batch_stats(),
            "errors": dict(self._errors),
            "max_batch_audio_s": self._queue.capacity,
            "batch_wait_timeout_s": self._queue.batch_wait_timeout_s,
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

    def capabilities(self) -> dict:
        """The model's :class:`~serve_app.recognizers.base.ModelCapabilities` as JSON."""
        return self._recognizer.capabilities().to_json()

    def ready(self) -> bool:
        return True
