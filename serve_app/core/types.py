"""Shared types: the items and results that cross stage boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import AsrError


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
    # 0: a file's segment or a live utterance's final. 1: a live partial, which a
    # recognizer queue runs only when no priority-0 item waits.
    priority: int = 0
    # A queued item with the same key is dropped when this one arrives (a newer partial
    # of the same utterance replaces the older one).
    coalesce_key: str | None = None
    # The backend's tokens of what this audio was heard to say before (a live utterance's
    # previous partial, ``SegmentTranscript.tokens``): a backend may decode faster by
    # checking them in one pass (see ``MoonshineBackend``); its text must not depend on them.
    draft_tokens: tuple[int, ...] = ()

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
    # ~2.4 the text is repetitive, a looping decode (see ``serve_app.core.coverage``).
    compression_ratio: float | None = None
    # Probability of ``language`` where the backend detected it (Whisper's language
    # head); None when the language was given, fixed, or detected without a score.
    language_probability: float | None = None
    # The backend's token ids of ``text`` where it exposes them (Moonshine): the next
    # partial of the same utterance sends them back as its ``SegmentJob.draft_tokens``.
    tokens: tuple[int, ...] = ()


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


ItemResult = SegmentTranscript | AsrError


@dataclass(frozen=True)
class EmbeddingJob:
    """One batch item: one embedding window (16 kHz mono float32) of one request.

    ``deadline_unix_s`` and ``request_id`` mean what they mean on
    :class:`~serve_app.recognizers.base.SegmentJob`.
    """

    audio: np.ndarray
    deadline_unix_s: float | None = None
    request_id: str | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class PunctuationRequest:
    """One request's stitched segment texts (time order), sent to the punctuation stage."""

    segment_texts: tuple[str, ...]
    request_id: str | None = None
    deadline_unix_s: float | None = None


# The live partials' wire types (ingress -> streaming deployment): here, not beside the
# streaming recognizer, so the ingress imports no torch.
@dataclass(frozen=True)
class StreamStep:
    """A live partial's call: ``samples`` are the utterance ``key``'s samples from
    ``start_sample`` on, for the replica that keeps the utterance's state."""

    session_id: str
    key: str
    samples: np.ndarray
    start_sample: int
    deadline_unix_s: float | None = None


@dataclass(frozen=True)
class StreamReply:
    """The utterance's text so far, and how many of its samples the state has been fed."""

    text: str
    fed_samples: int
