"""VAD deployment: CPU replicas around :class:`serve_app.vad.Vad` (FSMN-VAD or Silero)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from ray import serve

from serve_app import observability
from serve_app.config import VadSettings
from serve_app.segmentation import SpeechSegment
from serve_app.vad import Vad


@serve.deployment(ray_actor_options={"num_cpus": 1})
class VadDeployment:
    def __init__(self, settings: VadSettings, models_dir: str) -> None:
        self._vad = Vad(settings, models_dir=Path(models_dir))
        self._vad.warmup()  # load + first run here, before the replica takes traffic

    async def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        started = time.perf_counter()
        # The model call is CPU-bound: a thread keeps health checks answering meanwhile.
        result = await asyncio.to_thread(self._vad.segments, samples)
        observability.stage_latency_s().observe(
            time.perf_counter() - started, tags={"stage": "vad_model", "model": self._vad.name}
        )
        return result

    def ready(self) -> bool:
        return True
