"""The speaker-embedder protocol and its batch item, run by the shared batch runner.

A *backend* (:class:`SpeakerEmbedder`) knows one speaker-encoder family and embeds a list
of short windows in one padded forward pass. :class:`BatchedEmbedder` puts it behind the
same :class:`~serve_app.core.batching.BatchedRunner` as the recognizer: every embedding window
of every request is one :class:`EmbeddingJob` whose cost is its duration in audio
seconds; jobs are packed by padded cost, a failing forward is split or retried item by
item, and each position of the result is an embedding or that item's own typed error.
Nothing here imports Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from serve_app.core.batching import BatchedRunner
from serve_app.core.errors import AsrError, InternalError
from serve_app.core.types import EmbeddingJob

logger = logging.getLogger(__name__)


class EmbeddingError(InternalError):
    """A speaker embedding could not be computed (ours, not the client's: a 500)."""

    code = "embedding_failed"


@runtime_checkable
class SpeakerEmbedder(Protocol):
    """One speaker-encoder family. ``embed`` may raise; the runner isolates failures."""

    @property
    def name(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Embed 16 kHz mono float32 ``windows`` as ONE batch: ``(len(windows), dim)``
        float32, each row L2-normalised."""
        ...

    def warmup(self) -> object:
        """Run a small batch so the first real request does not pay for lazy init."""
        ...


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


class _EmbedderForward:
    """Adapts ``SpeakerEmbedder.embed`` (windows -> matrix) to the runner's forward
    (items -> one result per item)."""

    def __init__(self, embedder: SpeakerEmbedder) -> None:
        self.embedder = embedder

    def forward(self, jobs: Sequence[EmbeddingJob]) -> list[np.ndarray]:
        matrix = np.asarray(self.embedder.embed([job.audio for job in jobs]))
        if matrix.ndim != 2 or matrix.shape[0] != len(jobs):
            raise RuntimeError(f"embedder returned shape {matrix.shape} for {len(jobs)} windows")
        return list(matrix)


def _duration_s(job: EmbeddingJob) -> float:
    return job.duration_s


def _embedding_error(job: EmbeddingJob, exc: Exception) -> AsrError:
    if isinstance(exc, AsrError):
        return exc
    logger.exception("speaker embedding failed on a %.2f s window", job.duration_s)
    return EmbeddingError(f"speaker embedding failed: {type(exc).__name__}: {exc}")


class BatchedEmbedder(BatchedRunner[EmbeddingJob, np.ndarray, AsrError]):
    """Any :class:`SpeakerEmbedder` over many windows, with the recognizer's batching.

    ``embed_batch`` never raises for a single bad window: each position of its result is
    a ``(dim,)`` float32 embedding or the :class:`AsrError` of that window alone.
    """

    def __init__(
        self, embedder: SpeakerEmbedder, *, max_forward_audio_s: float, max_batch_items: int
    ) -> None:
        super().__init__(
            _EmbedderForward(embedder),
            cost_s=_duration_s,
            max_forward_cost=max_forward_audio_s,
            max_batch_items=max_batch_items,
            on_item_error=_embedding_error,
        )
        self.embedder = embedder
        self.max_forward_audio_s = max_forward_audio_s

    @property
    def name(self) -> str:
        return self.embedder.name

    def embed_batch(self, jobs: Sequence[EmbeddingJob]) -> list[np.ndarray | AsrError]:
        return self.run(jobs)

    def warmup(self) -> object:
        return self.embedder.warmup()
