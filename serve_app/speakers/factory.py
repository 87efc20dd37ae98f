"""Build the configured speaker encoder and wrap it in the shared batch runner."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import SpeakerSettings
from serve_app.speakers.base import BatchedEmbedder, SpeakerEmbedder


def build_speaker_embedder(settings: SpeakerSettings, models_dir: Path | None) -> SpeakerEmbedder:
    """The encoder named by ``settings.backend``, loaded but not warmed."""
    from serve_app.core.modelref import model_cpu_threads

    threads = model_cpu_threads(settings.cpu_threads)
    if settings.backend == "ge2e":
        import torch

        from serve_app.speakers.ge2e import GE2E_WEIGHTS_FILE, Ge2eEmbedder

        if threads and settings.device == "cpu":
            torch.set_num_threads(threads)
        folder = Path(settings.model).expanduser()
        if not folder.is_absolute() and models_dir is not None:
            folder = Path(models_dir) / folder
        return Ge2eEmbedder(folder / GE2E_WEIGHTS_FILE, device=settings.device)
    if settings.backend == "campplus":
        from serve_app.speakers.campplus import CamPlusPlusEmbedder

        return CamPlusPlusEmbedder(
            settings.model,
            models_dir=models_dir,
            device=settings.device,
            num_threads=threads or None,
        )
    raise ValueError(f"unknown speaker backend {settings.backend!r}")


def build_batched_embedder(settings: SpeakerSettings, models_dir: Path | None) -> BatchedEmbedder:
    """The encoder behind :class:`BatchedEmbedder`, warmed when ``settings.warmup``."""
    embedder = BatchedEmbedder(
        build_speaker_embedder(settings, models_dir),
        max_forward_audio_s=settings.batch.max_batch_audio_s,
        max_batch_items=settings.batch.max_batch_items,
    )
    if settings.warmup:
        embedder.warmup()
    return embedder
