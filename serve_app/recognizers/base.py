"""The recognizer protocol and the batch runner shared by every backend.

A *backend* knows one model family and runs one padded forward pass over a list of
segments (``forward``). The :class:`BatchedRecognizer` owns everything around it that must
not differ between backends: grouping items whose options change the forward pass, packing
them by padded cost, splitting a batch on out-of-memory, retrying items one by one so a bad
item fails alone, and restoring the input order. That machinery is the generic
:class:`serve_app.batching.BatchedRunner` (shared with the speaker embedder); this module
gives it the recognizer's item, cost and error. Nothing here imports Ray: the same object
runs inside a Serve replica and inside a Ray Data actor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from serve_app.audio import SAMPLE_RATE_HZ
from serve_app.batching import (  # noqa: F401  (BatchStats, is_out_of_memory: re-exported)
    BatchedRunner,
    BatchStats,
    is_out_of_memory,
)
from serve_app.errors import AsrError, RecognitionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecognitionOptions:
    """Per-request options; immutable and hashable so items can be grouped by them."""

    language: str | None = None
    prompt: str | None = None
    hotwords: tuple[str, ...] = ()
    # Word-level times in ``SegmentTranscript.words`` (where the backend computes them on
    # demand: Whisper's cross-attention alignment costs an extra decoder pass).
    word_timestamps: bool = False
    # Whisper: "translate" decodes English text from speech in any language.
    task: Literal["transcribe", "translate"] = "transcribe"
    # The request's punctuation switch (form ``punctuate``): None = the route's config
    # (a punctuation stage runs where configured), False = skip it. Not a decoding option:
    # no backend reads it, so it never splits batches.
    punctuate: bool | None = None


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
    # Probability of ``language`` where the backend detected it (Whisper's language
    # head); None when the language was given, fixed, or detected without a score.
    language_probability: float | None = None


@dataclass(frozen=True)
class ModelCapabilities:
    """What one served model can do, as ``GET /v1/models`` reports it.

    ``languages``: codes it transcribes (empty: not declared, e.g. a random-weight or
    unknown FunASR model). ``language_detection``: it finds the language itself when the
    client gives none. ``word_timestamps``: ``timestamp_granularities[]=word`` is honoured.
    ``hotwords``: ``"hotwords"`` (SeACo's bias list), ``"prompt"`` (Whisper's initial
    prompt and hotwords prefix) or ``None``. ``punctuation``: the model's text is already
    punctuated (Whisper, SenseVoice with ITN); a punctuation stage is reported by the
    ingress on top. ``diarization`` stays False until a diarization stage sets it.
    """

    languages: tuple[str, ...] = ()
    language_detection: bool = False
    translation: bool = False
    word_timestamps: bool = False
    hotwords: str | None = None
    punctuation: bool = False
    diarization: bool = False

    def to_json(self) -> dict:
        return {
            "languages": list(self.languages),
            "language_detection": self.language_detection,
            "translation": self.translation,
            "word_timestamps": self.word_timestamps,
            "hotwords": self.hotwords,
            "punctuation": self.punctuation,
            "diarization": self.diarization,
        }


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


ItemResult = SegmentTranscript | AsrError


def _duration_s(job: SegmentJob) -> float:
    return job.duration_s


def _recognition_error(job: SegmentJob, exc: Exception) -> AsrError:
    if isinstance(exc, AsrError):  # already typed (e.g. an option the model rejects)
        return exc
    logger.error("recognition failed on a %.2f s segment", job.duration_s, exc_info=exc)
    return RecognitionError(f"recognition failed: {type(exc).__name__}: {exc}")


class BatchedRecognizer(BatchedRunner[SegmentJob, SegmentTranscript, AsrError]):
    """Runs any backend over many segments with padded-cost packing and failure isolation.

    The generic :class:`~serve_app.batching.BatchedRunner` with the recognizer's choices:
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
        max_batch_audio_s: float,
        max_batch_items: int,
    ) -> None:
        super().__init__(
            backend,
            cost_s=_duration_s,
            max_batch_cost_s=max_batch_audio_s,
            max_batch_items=max_batch_items,
            on_item_error=_recognition_error,
            group_key=lambda job: backend.group_key(job.options),
        )
        self.max_batch_audio_s = max_batch_audio_s

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
