"""Streaming speech probabilities for live sessions: Silero VAD v6, one state per session.

The model is the ONNX file faster-whisper ships (``faster_whisper/assets/silero_vad_v6.onnx``,
no hub). faster-whisper runs it over a whole file as one sequence of 512-sample windows
(32 ms at 16 kHz), each with the previous window's last 64 samples as context, carrying the
LSTM state ``h, c`` along the sequence. :class:`SileroStream` runs the same sequence a
chunk at a time, carrying ``h, c`` and the context between calls, so its probabilities are
the whole-file ones (tested: identical), and a session never re-scans its buffer: the
state is two 128-float vectors, 64 samples of context and fewer than 512 samples waiting.

One ONNX Runtime session per process is shared by every stream (``run`` is thread-safe);
about 0.3 ms per call of three windows on one core here.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
WINDOW_MS = 32  # at 16 kHz


def model_path() -> Path:
    """faster-whisper's copy of the model, found without importing faster-whisper (whose
    import loads CTranslate2: an ingress replica needs only this file)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster-whisper is not installed: no Silero VAD model")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"


@lru_cache(maxsize=1)
def _session() -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 4
    return ort.InferenceSession(
        str(model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
    )


_load_lock = threading.Lock()


def load_model() -> None:
    """Create the shared session now (a replica's start), not in a session's first chunk."""
    with _load_lock:
        _session()


class SileroStream:
    """Speech probability of every complete 32 ms window of a 16 kHz float32 stream."""

    def __init__(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the windows ``samples`` completes (possibly none)."""
        audio = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        whole = len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._pending = audio[whole:].copy()
        if whole == 0:
            return np.zeros(0, np.float32)
        windows = audio[:whole].reshape(-1, WINDOW_SAMPLES)
        contexts = np.concatenate([self._context, windows[:-1, -CONTEXT_SAMPLES:]], axis=0)
        batch = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = _session().run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1:, -CONTEXT_SAMPLES:].copy()
        return np.asarray(probs, np.float32).reshape(-1)
