"""Build the configured backend and wrap it in the shared batch runner."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import BatchSettings, RecognizerSettings
from serve_app.core.modelref import model_cpu_threads
from serve_app.recognizers.base import AsrBackend, BatchedRecognizer


def build_backend(settings: RecognizerSettings, models_dir: Path | None) -> AsrBackend:
    """The backend named by ``settings.backend``, loaded (weights in memory) but not warmed."""
    if settings.backend == "funasr" and settings.runtime == "onnx":
        from serve_app.recognizers.funasr_onnx import FunAsrOnnxBackend

        return FunAsrOnnxBackend(
            settings.model,
            models_dir=models_dir,
            precision=settings.precision,
            name=settings.name,
            num_threads=model_cpu_threads(settings.cpu_threads) or None,
        )
    if settings.backend == "funasr":
        from serve_app.recognizers.funasr_backend import FunAsrBackend

        return FunAsrBackend(
            settings.model,
            models_dir=models_dir,
            device=settings.device,
            precision=settings.precision,
            name=settings.name,
            num_threads=model_cpu_threads(settings.cpu_threads) or None,
        )
    if settings.backend == "whisper":
        from serve_app.recognizers.whisper_backend import WhisperBackend

        return WhisperBackend(
            settings.model,
            models_dir=models_dir,
            device=settings.device,
            compute_type=_WHISPER_COMPUTE_TYPES[settings.precision],
            beam_size=settings.beam_size,
            cpu_threads=model_cpu_threads(settings.cpu_threads),
            name=settings.name,
            # Packed items hold several sentences: keep their times (timed spans).
            timestamps=settings.segment_pack_s > 0,
            partial_window_s=settings.partial_window_s,
        )
    if settings.backend == "moonshine":
        from serve_app.recognizers.moonshine_backend import MoonshineBackend

        return MoonshineBackend(
            settings.model,
            models_dir=models_dir,
            cpu_threads=model_cpu_threads(settings.cpu_threads),
            precision=settings.precision,
            partial_precision=settings.partial_precision,
            name=settings.name,
        )
    raise ValueError(f"unknown backend {settings.backend!r}")


_WHISPER_COMPUTE_TYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "int8": "int8",
}


def build_recognizer(settings: RecognizerSettings, models_dir: Path | None) -> BatchedRecognizer:
    """Load, optionally warm, and wrap: the one object Serve and Ray Data both run."""
    backend = build_backend(settings, models_dir)
    if settings.warmup:
        backend.warmup()  # type: ignore[attr-defined]
    return batched(backend, settings.batch)


def batched(backend: AsrBackend, batch: BatchSettings) -> BatchedRecognizer:
    """``backend`` behind the batch runner, planned as ``batch`` says (``"auto"``
    overhead: the backend's own ``forward_overhead_s``, none when it declares none)."""
    overhead_s = batch.forward_overhead_s
    if overhead_s == "auto":
        overhead_s = getattr(backend, "forward_overhead_s", None)
    return BatchedRecognizer(
        backend,
        max_forward_audio_s=batch.max_forward_audio_s,
        max_batch_items=batch.max_batch_items,
        forward_overhead_s=None if overhead_s is None else float(overhead_s),
    )
