"""The recognizer protocol and the batch runner shared by every backend.

A *backend* knows one model family and runs one padded forward pass over a list of
segments (``forward``). The :class:`BatchedRecognizer` owns everything around it that must
not differ between backends: grouping items whose options change the forward pass, packing
them by padded cost, splitting a batch on out-of-memory, retrying items one by one so a bad
item fails alone, and restoring the input order. That machinery is the generic
:class:`serve_app.core.batching.BatchedRunner` (shared with the speaker embedder); this module
gives it the recognizer's item, cost and error. Nothing here imports Ray: the same object
runs inside a Serve replica and inside a Ray Data actor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from serve_app.core.batching import (  # noqa: F401  (BatchStats, is_out_of_memory: re-exported)
    BatchedRunner,
    BatchStats,
    is_out_of_memory,
)
from serve_app.core.errors import AsrError, RecognitionError
from serve_app.core.types import (
    ItemResult,
    ModelCapabilities,
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
)

logger = logging.getLogger(__name__)


@runtime_checkable
class AsrBackend(Protocol):
    """One model family. ``forward`` may raise; the runner isolates failures."""

    @property
    def name(self) -> str: ...

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        """Transcribe all ``jobs`` (which share options) as one padded batch."""
        ...

    def group_key(self, options: RecognitionOptions) -> object:
        """Items with equal keys may share a forward pass."""
        ...

    def warmup(self) -> object:
        """Run a small batch so the first real request does not pay for lazy init."""
        ...


def _duration_s(job: SegmentJob) -> float:
    return job.duration_s


def _recognition_error(job: SegmentJob, exc: Exception) -> AsrError:
    if isinstance(exc, AsrError):  # already typed (e.g. an option the model rejects)
        return exc
    logger.error("recognition failed on a %.2f s segment", job.duration_s, exc_info=exc)
    return RecognitionError(f"recognition failed: {type(exc).__name__}: {exc}")


class BatchedRecognizer(BatchedRunner[SegmentJob, SegmentTranscript, AsrError]):
    """Runs any backend over many segments with padded-cost packing and failure isolation.

    The generic :class:`~serve_app.core.batching.BatchedRunner` with the recognizer's choices:
    cost is the segment's duration, items are grouped by the backend's ``group_key`` of
    their options, and an item that fails alone becomes a :class:`RecognitionError` (a
    typed :class:`AsrError` it raised passes through). ``transcribe_batch`` never raises for
    a single bad item: each position of its result is either a :class:`SegmentTranscript`
    or the :class:`AsrError` of that item alone.
    """

    backend: AsrBackend

    def __init__(
        self,
        backend: AsrBackend,
        *,
        max_forward_audio_s: float,
        max_batch_items: int,
        forward_overhead_s: float | None = None,
    ) -> None:
        super().__init__(
            backend,
            cost_s=_duration_s,
            max_forward_cost=max_forward_audio_s,
            max_batch_items=max_batch_items,
            on_item_error=_recognition_error,
            group_key=lambda job: backend.group_key(job.options),
            forward_overhead_s=forward_overhead_s,
        )
        self.max_forward_audio_s = max_forward_audio_s

    @property
    def name(self) -> str:
        return self.backend.name

    def validate(self, options: RecognitionOptions) -> None:
        """Raise the backend's typed error for options it cannot honour (before batching)."""
        validate = getattr(self.backend, "validate_options", None)
        if validate is not None:
            validate(options)

    def capabilities(self) -> ModelCapabilities:
        """The backend's :class:`ModelCapabilities` (none declared: all off)."""
        capabilities = getattr(self.backend, "capabilities", None)
        return capabilities() if capabilities is not None else ModelCapabilities()

    def transcribe_batch(self, jobs: Sequence[SegmentJob]) -> list[ItemResult]:
        return self.run(jobs)
