"""Row 6: the floor, the backend's forward pass alone on pre-decoded VAD segments (the
same VAD settings and segment packing as rows 4 and 5), sorted and packed by
``BatchedRecognizer``.
Timed: one ``transcribe_batch`` over all segments (features + forward).
"""

from __future__ import annotations

import time
from collections import Counter

from serve_app.tools import corpus as bench_corpus
from serve_app.tools.models import ModelSpec
from serve_app.tools.models import models_dir as _models_dir

from .harness import _corpus, _gpu_peak_mib, _quiet_funasr, _set_threads
from .measure import BatchRecord, cpu_breakdown, cpu_by_process, whisper_padded_s
from .settings import recognizer_settings


def row_floor(spec: dict) -> dict:
    """Row 6: the backend's forward alone on pre-decoded VAD segments, sorted and packed."""
    from serve_app.config import RecognizerSettings, VadSettings
    from serve_app.core.types import SegmentJob
    from serve_app.recognizers.base import BatchedRecognizer
    from serve_app.recognizers.factory import build_backend

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    vad = VadSettings.model_validate(spec["vad"])  # the same VAD settings as rows 4 and 5
    with _quiet_funasr():
        spans = bench_corpus.vad_spans(
            corpus, vad_settings_json=vad.model_dump_json(), models_dir=_models_dir()
        )
    settings = RecognizerSettings.model_validate(recognizer_settings(model, spec))
    spans = bench_corpus.pack_spans(spans, settings.segment_pack_s, corpus)  # as served
    segments = bench_corpus.load_segments(corpus, spans)
    with _quiet_funasr():
        backend = build_backend(settings, _models_dir())
        _set_threads(spec["threads"])
        backend.warmup()  # type: ignore[attr-defined]
    runner = BatchedRecognizer(
        backend,
        max_forward_audio_s=settings.batch.max_forward_audio_s,
        max_batch_items=settings.batch.max_batch_items,
    )
    jobs = [SegmentJob(audio=samples) for _, samples in segments]
    if spec["device"] == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    cpu_before = cpu_by_process()
    started = time.perf_counter()
    results = runner.transcribe_batch(jobs)
    wall_s = time.perf_counter() - started
    cpu_core_s = cpu_breakdown(cpu_before, cpu_by_process())
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} segments failed: {failed[0]}")
    stats = runner.last_stats
    record = BatchRecord(
        sizes=Counter(stats.batch_sizes), real_s=stats.real_audio_s, padded_s=stats.padded_audio_s
    )
    if model.is_whisper:
        record.padded_s = whisper_padded_s(stats.num_items)
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": [],
        **record.summary(),
        "speech_s": stats.real_audio_s,
        "segments": len(jobs),
        "gpu_peak_mib": _gpu_peak_mib(spec["device"]),
        "cpu_core_s": cpu_core_s,
        "notes": [
            f"{len(jobs)} items ({stats.real_audio_s:.0f} s of audio)",
            f"CPU core-seconds in the timed window: {sum(cpu_core_s.values()):g}",
        ],
        "timing_scope": "BatchedRecognizer.transcribe_batch(all segments): features + forward",
    }
