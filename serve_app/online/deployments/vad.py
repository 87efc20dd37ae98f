"""VAD deployment: CPU replicas around :class:`serve_app.vad.detectors.Vad` (FSMN-VAD or Silero)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from ray import serve

from serve_app.config import VadSettings
from serve_app.core import observability
from serve_app.core.memory import HeapTrimmer
from serve_app.core.segmentation import SpeechSegment
from serve_app.vad.detectors import Vad


@serve.deployment(ray_actor_options={"num_cpus": 1})
class VadDeployment:
    def __init__(self, settings: VadSettings, models_dir: str) -> None:
        self._vad = Vad(settings, models_dir=Path(models_dir))
        self._vad.warmup()  # load + first run here, before the replica takes traffic
        self._calls = asyncio.Semaphore(settings.concurrent_calls)
        # Each call frees a whole file's features: give the pages back (serve_app.core.memory).
        self._trimmer = HeapTrimmer()

    async def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        started = time.perf_counter()
        async with self._calls:
            # The model call is CPU-bound: a thread keeps health checks answering meanwhile.
            result = await asyncio.to_thread(self._segments_and_trim, samples)
        observability.stage_latency_s().observe(
            time.perf_counter() - started, tags={"stage": "vad_model", "model": self._vad.name}
        )
        return result

    def _segments_and_trim(self, samples: np.ndarray) -> list[SpeechSegment]:
        try:
            return self._vad.segments(samples)
        finally:
            self._trimmer.after_call()

    def ready(self) -> bool:
        return True
