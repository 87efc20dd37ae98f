"""FunASR CAM++ speaker encoder (``cam++``), through FunASR's own loader and model class.

The model is found and built exactly like a FunASR recognizer (a local folder, a name under
the models folder, or a hub id such as ``cam++``: see
:func:`serve_app.recognizers.funasr_backend.load_funasr_model`) and run through its own
``CAMPPlus.inference`` (80-dim kaldi fbank, per-window mean normalisation, 192-dim
embedding).

Why windows are batched by length: ``CAMPPlus`` zero-pads the fbank of a batch to its
longest item and then runs convolutions, context-aware masking (which takes a mean over
the whole time axis) and statistics pooling over the padded frames, so a padded item's
embedding differs from its own. ``embed`` therefore runs one forward per distinct window
length; diarization windows have one fixed length (only a segment shorter than a window
gives a shorter one), so a batch is almost always a single forward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.batching import group_indices
from serve_app.recognizers.funasr_loader import load_funasr_model
from serve_app.speakers.base import l2_normalize

logger = logging.getLogger(__name__)

CAMPPLUS_CLASSES = frozenset({"CAMPPlus"})


class CamPlusPlusEmbedder:
    """CAM++ speaker embeddings implementing ``SpeakerEmbedder``."""

    def __init__(
        self,
        model_ref: str = "cam++",
        *,
        models_dir: Path | None = None,
        device: str = "cpu",
        hub: str = "ms",
        num_threads: int | None = None,
    ) -> None:
        loaded = load_funasr_model(
            model_ref, models_dir=models_dir, device=device, hub=hub, num_threads=num_threads
        )
        if loaded.model_class not in CAMPPLUS_CLASSES:
            raise ValueError(
                f"{model_ref!r} is a {loaded.model_class}, not a CAM++ speaker encoder"
            )
        self._module: Any = loaded.module  # CAMPPlus: its own ``inference``
        self._device = device
        self._model_ref = model_ref
        conf = loaded.kwargs.get("model_conf") or {}
        self._embedding_dim = int(conf.get("embedding_size", 192))

    @property
    def name(self) -> str:
        return "cam++"

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def _forward_equal_length(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        results, _ = self._module.inference(
            data_in=[np.asarray(w, dtype=np.float32) for w in windows],
            device=self._device,
            fs=SAMPLE_RATE_HZ,
        )
        return results[0]["spk_embedding"].float().cpu().numpy()

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(windows), self._embedding_dim), np.float32)
        if not windows:
            return out
        if any(len(w) < SAMPLE_RATE_HZ // 40 for w in windows):  # under one 25 ms fbank frame
            raise ValueError("cannot embed a window shorter than 25 ms")
        with torch.inference_mode():
            for group in group_indices([len(w) for w in windows]):
                out[group] = self._forward_equal_length([windows[i] for i in group])
        return l2_normalize(out)

    def warmup(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        return self.embed([(0.05 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)])
