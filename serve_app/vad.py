"""FSMN-VAD speech detection: one plain class shared by Serve and Ray Data."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from serve_app.config import VadSettings
from serve_app.modelref import resolve_model_ref
from serve_app.segmentation import SpeechSegment, postprocess_spans

logger = logging.getLogger(__name__)


class FsmnVad:
    """FunASR FSMN-VAD plus segment post-processing.

    ``segments(samples)`` returns speech segments in the audio's own time, each at most
    ``settings.max_segment_s`` long; silence gives an empty list. Thread-safe: the model
    call is serialised by a lock (FSMN-VAD keeps streaming state while it runs).
    """

    def __init__(self, settings: VadSettings, *, models_dir: Path | None = None) -> None:
        from funasr import AutoModel  # heavy import, kept off module import

        self.settings = settings
        model_path = resolve_model_ref(settings.model, models_dir)
        self._auto = AutoModel(
            model=model_path,
            device=settings.device,
            disable_update=True,
            disable_pbar=True,
            disable_log=True,
            ncpu=settings.cpu_threads,  # the loader calls torch.set_num_threads(ncpu)
        )
        self._lock = threading.Lock()

    def speech_spans_ms(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Raw FSMN-VAD output: [start_ms, end_ms] spans of speech."""
        if len(samples) == 0:
            return []
        kwargs = {k: v for k, v in self._auto.kwargs.items() if k not in ("model", "cache")}
        with self._lock:
            # A fresh cache per call: FSMN-VAD is a streaming model and would otherwise
            # carry state from one request into the next.
            result = self._auto.model.inference(
                data_in=[np.ascontiguousarray(samples, dtype=np.float32)],
                key=["vad"],
                cache={},
                **kwargs,
            )
        items = result[0] if isinstance(result, tuple) else result
        spans = items[0]["value"] if items else []
        return [(int(start), int(end)) for start, end in spans]

    def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        s = self.settings
        return postprocess_spans(
            self.speech_spans_ms(samples),
            samples,
            max_segment_s=s.max_segment_s,
            merge_gap_ms=s.merge_gap_ms,
            min_segment_ms=s.min_segment_ms,
            pad_ms=s.pad_ms,
        )

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        self.segments((rng.standard_normal(16_000) * 0.01).astype(np.float32))
