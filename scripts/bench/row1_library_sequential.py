"""Row 1: the library, one file at a time.

FunASR: ``AutoModel.generate(file)`` without VAD (``funasr_automodel.py``).
faster-whisper: ``WhisperModel.transcribe(file)``, sequential, greedy (below).
Timed: the sum over files of one call each, the model loaded and warmed up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serve_app.tools.models import ModelSpec

from .common import WHISPER_WINDOW_S
from .funasr_automodel import row_funasr_automodel
from .harness import _corpus, _noise_wav, _whisper_model
from .measure import BatchRecord


def run(spec: dict) -> dict:
    if ModelSpec(**spec["model"]).is_whisper:
        return row_whisper_sequential(spec)
    return row_funasr_automodel(spec, with_vad=False)


def row_whisper_sequential(spec: dict) -> dict:
    """Row 1 (Whisper): faster-whisper ``transcribe`` one file at a time, greedy."""
    corpus = _corpus(spec)
    wm = _whisper_model(spec)
    record = BatchRecord()
    inner = wm.encode

    def encode(features: Any, *args: Any, **kwargs: Any) -> Any:
        record.add(1, 0.0, WHISPER_WINDOW_S)  # one 30 s window per call
        return inner(features, *args, **kwargs)

    segments, _ = wm.transcribe(str(_noise_wav(Path(spec["tmp"]))), beam_size=1, language="en")
    list(segments)  # warm-up
    wm.encode = encode
    latencies = []
    started = time.perf_counter()
    for f in corpus.files:
        t0 = time.perf_counter()
        segments, _ = wm.transcribe(f.path, beam_size=1, language="en")
        list(segments)  # the generator does the work
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    record.real_s = corpus.total_s  # every second of every file is encoded
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": latencies,
        **record.summary(),
        "notes": ["WhisperModel.transcribe(beam_size=1, language='en'), no VAD, defaults else"],
        "timing_scope": "sum over files of transcribe(file) incl. decode (model loaded)",
    }
