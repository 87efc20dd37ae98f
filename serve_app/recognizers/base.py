"""The recognizer protocol and the batch runner shared by every backend.

A *backend* knows one model family and runs one padded forward pass over a list of
segments (``forward``). The :class:`BatchedRecognizer` owns everything around it that must
not differ between backends: grouping items whose options change the forward pass, packing
them by padded cost, splitting a batch on out-of-memory, retrying items one by one so a bad
item fails alone, and restoring the input order. Nothing here imports Ray: the same object
runs inside a Serve replica and inside a Ray Data actor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from serve_app.audio import SAMPLE_RATE_HZ
from serve_app.batching import BatchPlan, group_indices, plan_batches, scatter
from serve_app.errors import AsrError, RecognitionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecognitionOptions:
    """Per-request options; immutable and hashable so items can be grouped by them."""

    language: str | None = None
    prompt: str | None = None
    hotwords: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmentJob:
    """One batch item: a speech segment (16 kHz mono float32) and its request's options.

    ``deadline_unix_s`` (wall clock, ``time.time()``: it crosses processes) is when the
    request that spawned the item stops waiting; a stage that finds it passed drops the
    item before it costs compute. ``request_id`` is for logs only.
    """

    audio: np.ndarray
    options: RecognitionOptions = RecognitionOptions()
    deadline_unix_s: float | None = None
    request_id: str | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class WordTiming:
    start_s: float
    end_s: float
    word: str


@dataclass(frozen=True)
class TextSpan:
    """A timed part of a segment's text (times relative to the segment start)."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class SegmentTranscript:
    """What a backend returns for one segment. Times are relative to the segment start.

    ``spans``: when the backend times parts of its text (Whisper with timestamp tokens,
    used when several VAD segments were packed into one item), the response gets one
    segment per span instead of one per item.
    """

    text: str
    words: tuple[WordTiming, ...] = ()
    language: str | None = None
    spans: tuple[TextSpan, ...] = ()
    # zlib compression ratio of ``text`` where the backend measures it (Whisper): over
    # ~2.4 the text is repetitive, a looping decode (see ``serve_app.coverage``).
    compression_ratio: float | None = None


@dataclass
class BatchStats:
    """What one call of :meth:`BatchedRecognizer.transcribe_batch` did (for metrics)."""

    num_items: int = 0
    num_forward_passes: int = 0
    real_audio_s: float = 0.0
    padded_audio_s: float = 0.0
    num_oom_splits: int = 0
    num_failed_items: int = 0
    forward_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def padding_efficiency(self) -> float:
        return 1.0 if self.padded_audio_s <= 0 else self.real_audio_s / self.padded_audio_s


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


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (and CPU allocator) out-of-memory, across torch versions."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, (MemoryError, RuntimeError)) and "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


ItemResult = SegmentTranscript | AsrError


class BatchedRecognizer:
    """Runs any backend over many segments with padded-cost packing and failure isolation.

    ``transcribe_batch`` never raises for a single bad item: each position of its result is
    either a :class:`SegmentTranscript` or the :class:`AsrError` of that item alone.
    """

    def __init__(
        self,
        backend: AsrBackend,
        *,
        max_batch_audio_s: float,
        max_batch_items: int,
    ) -> None:
        self.backend = backend
        self.max_batch_audio_s = max_batch_audio_s
        self.max_batch_items = max_batch_items
        self.last_stats = BatchStats()

    @property
    def name(self) -> str:
        return self.backend.name

    def validate(self, options: RecognitionOptions) -> None:
        """Raise the backend's typed error for options it cannot honour (before batching)."""
        validate = getattr(self.backend, "validate_options", None)
        if validate is not None:
            validate(options)

    def plan(self, jobs: Sequence[SegmentJob]) -> list[tuple[list[int], BatchPlan]]:
        """Group by options, then pack each group by padded cost."""
        groups = group_indices([self.backend.group_key(job.options) for job in jobs])
        planned = []
        for group in groups:
            plan = plan_batches(
                [jobs[i].duration_s for i in group],
                max_batch_audio_s=self.max_batch_audio_s,
                max_batch_items=self.max_batch_items,
            )
            planned.append((group, plan))
        return planned

    def transcribe_batch(self, jobs: Sequence[SegmentJob]) -> list[ItemResult]:
        stats = BatchStats(num_items=len(jobs))
        results_by_batch: list[tuple[list[int], list[ItemResult]]] = []
        for group, plan in self.plan(jobs):
            for batch in plan.batches:
                indices = [group[i] for i in batch]
                batch_jobs = [jobs[i] for i in indices]
                results_by_batch.append((indices, self._run_isolated(batch_jobs, stats)))
        self.last_stats = stats
        return scatter(results_by_batch, len(jobs)) if jobs else []

    def _run_isolated(self, jobs: list[SegmentJob], stats: BatchStats) -> list[ItemResult]:
        started = time.perf_counter()
        try:
            out = self.backend.forward(jobs)
            stats.forward_s += time.perf_counter() - started
            if len(out) != len(jobs):
                raise RuntimeError(f"backend returned {len(out)} results for {len(jobs)} items")
            longest_s = max(job.duration_s for job in jobs)
            stats.num_forward_passes += 1
            stats.batch_sizes.append(len(jobs))
            stats.real_audio_s += sum(job.duration_s for job in jobs)
            stats.padded_audio_s += longest_s * len(jobs)
            return list(out)
        except Exception as exc:
            if len(jobs) > 1 and is_out_of_memory(exc):
                # Halve and retry: the two halves need less activation memory each.
                stats.num_oom_splits += 1
                _release_cached_memory()
                mid = len(jobs) // 2
                logger.warning("out of memory on a batch of %d; splitting", len(jobs))
                return self._run_isolated(jobs[:mid], stats) + self._run_isolated(jobs[mid:], stats)
            if len(jobs) > 1:
                # Some item broke the whole forward: find it by running each alone.
                logger.warning("batch of %d failed (%r); retrying items alone", len(jobs), exc)
                results: list[ItemResult] = []
                for job in jobs:
                    results.extend(self._run_isolated([job], stats))
                return results
            if is_out_of_memory(exc):
                _release_cached_memory()
            stats.num_failed_items += 1
            if isinstance(exc, AsrError):  # already typed (e.g. an option the model rejects)
                return [exc]
            logger.exception("recognition failed on a %.2f s segment", jobs[0].duration_s)
            return [RecognitionError(f"recognition failed: {type(exc).__name__}: {exc}")]
