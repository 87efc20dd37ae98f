"""Punctuation deployment: cross-request batching of text windows around the plain stage.

A call of :meth:`PunctuationDeployment.punctuate` carries one request's segment texts. The
replica plans the request's windows (this needs the model's word splitter and vocabulary,
which only the replica loads) and queues **each window as its own item** of the shared
:class:`~serve_app.online.batch_queue.BatchQueue` (cost = tokens, capacity
``max_batch_tokens``), so the windows of many concurrent requests share forward passes; the
plain :class:`~serve_app.punctuation.base.BatchedPunctuator` packs them by padded tokens.
The marks are mapped back onto the request's segments here and the texts returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

from ray import serve

from serve_app.config import PunctuationSettings
from serve_app.core import observability
from serve_app.core.batching import item_cost_s
from serve_app.core.errors import AsrError
from serve_app.core.types import PunctuationRequest
from serve_app.online.batch_queue import BatchQueue, QueuedItem
from serve_app.punctuation.base import PunctuationWindow
from serve_app.punctuation.stage import build_punctuator

logger = logging.getLogger(__name__)


@serve.deployment
class PunctuationDeployment:
    def __init__(self, settings: PunctuationSettings, models_dir: str, model: str) -> None:
        self._settings = settings
        self._stage = build_punctuator(settings, Path(models_dir))  # load + warm-up
        self._queue: BatchQueue[PunctuationWindow] = BatchQueue(
            self._forward,
            capacity=float(settings.max_batch_tokens),
            batch_wait_timeout_s=settings.batch_wait_timeout_s,
            on_drop=self._dropped,
        )
        self._tags = {"model": f"{model}/punctuation"}
        self._batch_size_counts: Counter[int] = Counter()
        self._totals = {"windows": 0, "tokens": 0, "busy_s": 0.0, "forwards": 0}

    def reconfigure(self, user_config: dict) -> None:
        """Live tuning without restart: ``batch_wait_timeout_s`` and ``max_batch_tokens``."""
        self._queue.reconfigure(user_config, capacity_key="max_batch_tokens")

    async def punctuate(self, request: PunctuationRequest) -> list[str]:
        """Each segment's text punctuated, in order (a window's failure raises its error)."""
        planned = self._stage.request_windows(
            request.segment_texts,
            request_id=request.request_id,
            deadline_unix_s=request.deadline_unix_s,
        )
        results = await asyncio.gather(
            *(self._submit(window) for window in planned.windows), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, AsrError):
                raise result
        out = planned.finish(results)  # type: ignore[arg-type]
        if isinstance(out, AsrError):
            raise out
        return out

    async def _submit(self, window: PunctuationWindow) -> tuple[str, ...]:
        cost = item_cost_s(
            window.num_tokens,
            max_batch_audio_s=self._queue.capacity,
            max_batch_items=self._settings.max_batch_items,
        )
        return await self._queue.submit(window, cost)

    def _dropped(self, reason: str) -> None:
        observability.deadline_drops_total().inc(tags={**self._tags, "reason": reason})

    async def _forward(self, items: list[QueuedItem[PunctuationWindow]]) -> list:
        started = time.perf_counter()
        windows = [item.job for item in items]
        # Blocking model call: a thread keeps the event loop (arrivals, health) responsive.
        results = await asyncio.to_thread(self._stage.run, windows)
        self._totals["busy_s"] += time.perf_counter() - started
        self._totals["forwards"] += 1
        self._totals["windows"] += len(windows)
        self._totals["tokens"] += sum(w.num_tokens for w in windows)
        self._batch_size_counts[len(windows)] += 1
        return results

    def batch_stats(self) -> dict:
        """Windows per dynamic batch seen by this replica (tests, the load tool)."""
        return {
            "batch_size_counts": dict(sorted(self._batch_size_counts.items())),
            **self._totals,
        }

    def ready(self) -> bool:
        return True
