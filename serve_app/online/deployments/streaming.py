"""Streaming deployment: live sessions' 2pass partials through the shared batch queue.

A call of :meth:`StreamingDeployment.step` carries one utterance's new samples
(:class:`~serve_app.core.types.StreamStep`); the utterance's state
(FunASR's cache, ~13 MB for Paraformer-large) stays on this replica, in its session's
:class:`~serve_app.recognizers.funasr_streaming.SessionStreams`, and only the text comes
back. The session is Serve's multiplexed model id, so its calls go to the replica that
holds its states (Serve keeps up to ``MAX_SESSIONS_PER_REPLICA`` sessions per replica,
least recently used out first). A call that finds no state where it expects one (another
replica, a restart, an eviction) is answered None and the ingress sends the utterance from
its start: a lost state costs one re-feed, never text. Each advance is one item of the
same :class:`~serve_app.online.batch_queue.BatchQueue` the recognizer uses (cost = the
new audio's seconds, deadlines, cancelled calls dropped), run by the plain
:class:`~serve_app.recognizers.funasr_streaming.FunAsrStreamingRecognizer` (a batch's
items one after another: FunASR's streaming model takes one cache per call).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from ray import serve

from serve_app.config import StreamingSettings
from serve_app.core import observability
from serve_app.core.batching import item_cost_s
from serve_app.core.types import StreamReply, StreamStep
from serve_app.online.batch_queue import BatchQueue, QueuedItem
from serve_app.recognizers.funasr_streaming import (
    FunAsrStreamingRecognizer,
    SessionStreams,
    StreamChunk,
)

# Sessions whose states one replica keeps (Serve's multiplexing LRU): above the sessions
# its ingress replicas admit (RealtimeSettings.max_sessions, 32 each by default).
MAX_SESSIONS_PER_REPLICA = 256


@serve.deployment
class StreamingDeployment:
    def __init__(self, settings: StreamingSettings, models_dir: str, model: str) -> None:
        self._settings = settings
        self._streaming = FunAsrStreamingRecognizer(
            settings.model,
            models_dir=Path(models_dir),
            device=settings.device,
            cpu_threads=settings.cpu_threads,
            chunk_size=settings.chunk_size,
            encoder_chunk_look_back=settings.encoder_chunk_look_back,
            decoder_chunk_look_back=settings.decoder_chunk_look_back,
        )
        self._streaming.warmup()
        self._queue: BatchQueue[StreamChunk] = BatchQueue(
            self._forward,
            capacity=settings.max_batch_audio_s,
            batch_wait_timeout_s=settings.batch_wait_timeout_s,
            on_drop=self._dropped,
        )
        self._tags = {"model": f"{model}/streaming"}
        self._batch_size_counts: Counter[int] = Counter()
        self._totals = {"items": 0, "audio_s": 0.0, "busy_s": 0.0, "forwards": 0, "state_misses": 0}

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_audio_s``."""
        self._queue.reconfigure(user_config, capacity_key="max_batch_audio_s")

    @serve.multiplexed(max_num_models_per_replica=MAX_SESSIONS_PER_REPLICA)
    async def _session(self, session_id: str) -> SessionStreams:
        return SessionStreams()

    async def step(self, call: StreamStep) -> StreamReply | None:
        """The utterance's text once its state here has been fed ``call.samples``; None
        if its state is not here at ``call.start_sample`` (send it from the start).
        Raises the item's own error (the state stays as it was)."""
        session = await self._session(call.session_id)
        state = session.state_for(call.key, call.start_sample)
        if state is None:
            self._totals["state_misses"] += 1
            return None
        chunk = StreamChunk(state, call.samples, call.deadline_unix_s, call.key)
        cost_s = item_cost_s(
            min(chunk.duration_s, self._queue.capacity),
            max_batch_audio_s=self._queue.capacity,
            max_batch_items=self._settings.max_batch_items,
        )
        advanced = await self._queue.submit(chunk, cost_s)
        session.keep(call.key, advanced)
        return StreamReply(advanced.text, advanced.fed_samples)

    async def end(self, session_id: str, key: str) -> None:
        """The utterance ``key`` ended: its state is freed."""
        (await self._session(session_id)).end(key)

    def _dropped(self, reason: str) -> None:
        observability.deadline_drops_total().inc(tags={**self._tags, "reason": reason})

    async def _forward(self, items: list[QueuedItem[StreamChunk]]) -> list:
        started = time.perf_counter()
        for item in items:
            observability.queue_wait_s().observe(started - item.enqueued_at, tags=self._tags)
        chunks = [item.job for item in items]
        # Blocking model call: a thread keeps the event loop (arrivals, health) responsive.
        results = await asyncio.to_thread(self._streaming.run, chunks)
        elapsed_s = time.perf_counter() - started
        audio_s = sum(chunk.duration_s for chunk in chunks)
        self._totals["busy_s"] += elapsed_s
        self._totals["forwards"] += 1
        self._totals["items"] += len(chunks)
        self._totals["audio_s"] += audio_s
        self._batch_size_counts[len(chunks)] += 1
        # The recognizer's metrics, tagged model=<name>/streaming (docs/DEPLOY.md).
        observability.batch_items().observe(len(chunks), tags=self._tags)
        observability.forward_s().observe(elapsed_s, tags=self._tags)
        observability.audio_processed_s().inc(audio_s, tags=self._tags)
        failed = sum(isinstance(result, Exception) for result in results)
        if failed:
            observability.errors_total().inc(
                failed, tags={"kind": "recognition_failed", "stage": "streaming"}
            )
        return results

    def batch_stats(self) -> dict:
        """Items per dynamic batch seen by this replica (tests, the load tool)."""
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)  # Serve's LRU of sessions
        sessions = list(wrapper.models.values()) if wrapper is not None else []
        return {
            "batch_size_counts": dict(sorted(self._batch_size_counts.items())),
            **self._totals,
            "sessions": len(sessions),
            "states": sum(len(session) for session in sessions),
        }

    def ready(self) -> bool:
        return True
