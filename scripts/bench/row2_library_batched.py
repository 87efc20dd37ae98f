"""Row 2: the library's own batching.

FunASR: ``AutoModel`` + fsmn-vad + ``batch_size_s`` (``funasr_automodel.py``).
faster-whisper: its ``BatchedInferencePipeline`` with Silero VAD (below).
Timed: the sum over files of one call each, the model loaded and warmed up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serve_app.tools.models import ModelSpec

from .funasr_automodel import row_funasr_automodel
from .harness import _corpus, _noise_wav, _whisper_model
from .measure import BatchRecord, whisper_padded_s


def run(spec: dict) -> dict:
    if ModelSpec(**spec["model"]).is_whisper:
        return row_whisper_batched(spec)
    return row_funasr_automodel(spec, with_vad=True)


def row_whisper_batched(spec: dict) -> dict:
    """Row 2 (Whisper): faster-whisper's own ``BatchedInferencePipeline`` (Silero VAD)."""
    from faster_whisper import BatchedInferencePipeline

    corpus = _corpus(spec)
    wm = _whisper_model(spec)
    pipeline = BatchedInferencePipeline(wm)
    batch_size = int(spec["batch"]["max_batch_items"])
    record = BatchRecord()
    inner = pipeline.forward

    def forward(features: Any, tokenizer: Any, chunks_metadata: Any, options: Any) -> Any:
        real = sum(float(c["duration"]) for c in chunks_metadata)
        record.add(len(chunks_metadata), real, whisper_padded_s(len(chunks_metadata)))
        return inner(features, tokenizer, chunks_metadata, options)

    run = {"batch_size": batch_size, "beam_size": 1, "language": "en"}
    segments, _ = pipeline.transcribe(str(_noise_wav(Path(spec["tmp"]))), **run)
    list(segments)
    pipeline.forward = forward
    latencies = []
    started = time.perf_counter()
    for f in corpus.files:
        t0 = time.perf_counter()
        segments, _ = pipeline.transcribe(f.path, **run)
        list(segments)
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": latencies,
        **record.summary(),
        "notes": [f"BatchedInferencePipeline.transcribe(batch_size={batch_size}, beam_size=1)"],
        "timing_scope": "sum over files of transcribe(file) incl. decode + Silero VAD",
    }
