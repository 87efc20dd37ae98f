"""The per-file pipeline, written once: plain stage steps that two drivers run.

    speech items -> [language probe] -> recognize -> re-decode what was missed -> stitch
                 -> punctuate            (per signal: the mix, or each channel)
    speech spans -> embedding windows -> embed -> cluster          (diarization)
    signals' texts + speaker turns -> one transcript with speakers (assemble)

A step function is a generator: it never calls a model itself. It *yields* a list of
stage calls (:class:`Recognize`, :class:`Embed`, :class:`Punctuate`, :class:`Offload`)
and is sent back one outcome per call (a value, or the exception the call raised), so the
same logic runs under two drivers:

- online (``serve_app.online.service``): async; each call goes to a deployment handle,
  items of many requests meet in Serve's dynamic batches;
- offline (``serve_app.batch.stages``): sync; :func:`run_lockstep` steps every file of a
  Ray Data block together and runs all the calls of one kind as ONE batch of the actor's
  plain classes.

This module imports no runtime (no Ray, no HTTP) and no model stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from serve_app.config import DiarizationSettings
from serve_app.core import observability
from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.diarization import (
    Diarization,
    DiarizationOptions,
    check_diarization_size,
    embedding_windows,
    speech_spans_s,
    turns_from_embeddings,
    window_audio,
)
from serve_app.core.errors import AsrError
from serve_app.core.language import PROBE_ITEMS, decide_language, probe_unsure
from serve_app.core.punctuate import apply_texts
from serve_app.core.redecode import ItemAudio, Redecoder
from serve_app.core.segmentation import PackedPiece, SpeechSegment
from serve_app.core.speaker_request import label_segments, merge_channels, talk_time_s
from serve_app.core.text import join_texts
from serve_app.core.transcript import TranscriptSegment, stitch_segments
from serve_app.core.types import (
    EmbeddingJob,
    ItemResult,
    PunctuationRequest,
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


# -- stage calls ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Recognize:
    """Recognize ``jobs``; the outcome is one result (or exception) per job.

    ``known``: results the file already has (language probe items), returned as they are
    and never sent again. ``spans_ms`` marks a signal's first pass: the online driver
    reports its items in audio order while they complete (streaming)."""

    jobs: tuple[SegmentJob, ...]
    known: Mapping[int, SegmentTranscript] = field(default_factory=dict)
    spans_ms: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, eq=False)
class Embed:
    """Embed every window; the outcome is one embedding (or exception) per job."""

    jobs: tuple[EmbeddingJob, ...]


@dataclass(frozen=True, eq=False)
class Punctuate:
    """Punctuate one request's segment texts; the outcome is the texts (same count)."""

    request: PunctuationRequest


@dataclass(frozen=True, eq=False)
class Offload:
    """Plain CPU work (clustering): the online driver runs it off its event loop."""

    fn: Callable[[], Any]


Call = Recognize | Embed | Punctuate | Offload
# A step yields the calls it needs at once and is sent their outcomes, in order.
Steps = Generator[list[Call], list[Any], T]


def raise_first(outcomes: Sequence[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def per_item(outcome: Any, count: int) -> list[Any]:
    """A Recognize/Embed outcome as one result per item: a whole call that failed (the
    offline batch raised) is that failure for each of its items."""
    if isinstance(outcome, BaseException):
        return [outcome] * count
    return list(outcome)


def gather(steps: Sequence[Steps[Any]]) -> Steps[list[Any]]:
    """Several steps at once: each round yields the calls of every step still running,
    so their items share the same batches. Returns their results in order (a step that
    raised fails the whole gather, as :func:`asyncio.gather` does)."""
    results: list[Any] = [None] * len(steps)
    pending: dict[int, list[Call]] = {}
    for index, step in enumerate(steps):
        try:
            pending[index] = next(step)
        except StopIteration as stop:
            results[index] = stop.value
    try:
        while pending:
            order = sorted(pending)
            outcomes = yield [call for i in order for call in pending[i]]
            cursor = 0
            for index in order:
                mine = outcomes[cursor : cursor + len(pending[index])]
                cursor += len(pending[index])
                try:
                    pending[index] = steps[index].send(mine)
                except StopIteration as stop:
                    results[index] = stop.value
                    del pending[index]
    finally:
        for step in steps:
            step.close()
    return results


def run_lockstep(
    steps: Sequence[Steps[Any]], execute: Callable[[list[Call]], list[Any]]
) -> list[Any]:
    """The offline driver: step every file together. Each round, every running step's
    calls go to ``execute`` at once (which batches calls of one kind together); a step
    that raises ends with its exception as its result, the others go on."""
    results: list[Any] = [None] * len(steps)
    pending: dict[int, list[Call]] = {}

    def advance(index: int, outcomes: list[Any] | None) -> None:
        try:
            calls = next(steps[index]) if outcomes is None else steps[index].send(outcomes)
            pending[index] = calls
        except StopIteration as stop:
            results[index] = stop.value
            pending.pop(index, None)
        except Exception as exc:  # this file fails; the block goes on
            results[index] = exc
            pending.pop(index, None)

    for index in range(len(steps)):
        advance(index, None)
    while pending:
        order = sorted(pending)
        calls = [call for i in order for call in pending[i]]
        try:
            outcomes = execute(calls)
        except Exception as exc:  # a whole batch failed: fail these files, not the block
            logger.exception("a batch of %d stage calls failed", len(calls))
            outcomes = [exc] * len(calls)
        cursor = 0
        for index in order:
            count = len(pending[index])
            advance(index, list(outcomes[cursor : cursor + count]))
            cursor += count
    return results


class BlockExecutor:
    """The offline driver's stage calls: every call of one kind in a round becomes ONE
    call of the actor's plain class (``transcribe_batch``, ``embed_batch``,
    ``punctuate``), so the items of a whole block share padded batches."""

    def __init__(
        self,
        transcribe_batch: Callable[[list[SegmentJob]], Sequence[Any]] | None = None,
        *,
        embed_batch: Callable[[list[EmbeddingJob]], Sequence[Any]] | None = None,
        punctuate: Callable[[list[list[str]]], Sequence[Any]] | None = None,
    ) -> None:
        self._transcribe_batch = transcribe_batch
        self._embed_batch = embed_batch
        self._punctuate = punctuate

    def __call__(self, calls: list[Call]) -> list[Any]:
        outcomes: list[Any] = [None] * len(calls)
        for kind, run in (
            (Recognize, self._recognize),
            (Embed, self._embed),
            (Punctuate, self._punctuate_all),
        ):
            mine = [i for i, c in enumerate(calls) if isinstance(c, kind)]
            if not mine:
                continue
            try:
                results = run([calls[i] for i in mine])
            except Exception as exc:  # this stage's batch failed: its calls' files fail
                logger.exception("%s batch of %d calls failed", kind.__name__, len(mine))
                results = [exc] * len(mine)
            for i, result in zip(mine, results, strict=True):
                outcomes[i] = result
        for i, c in enumerate(calls):
            if isinstance(c, Offload):
                try:
                    outcomes[i] = c.fn()
                except Exception as exc:  # an outcome: the step decides what fails
                    outcomes[i] = exc
        return outcomes

    def _recognize(self, calls: list[Any]) -> list[list[Any]]:
        todo = [(n, k) for n, c in enumerate(calls) for k in range(len(c.jobs)) if k not in c.known]
        jobs = [calls[n].jobs[k] for n, k in todo]
        done = dict(zip(todo, _checked(self._transcribe_batch, jobs, "recognizer")))
        return [
            [c.known[k] if k in c.known else done[(n, k)] for k in range(len(c.jobs))]
            for n, c in enumerate(calls)
        ]

    def _embed(self, calls: list[Any]) -> list[list[Any]]:
        results = iter(_checked(self._embed_batch, [j for c in calls for j in c.jobs], "embedder"))
        return [[next(results) for _ in c.jobs] for c in calls]

    def _punctuate_all(self, calls: list[Any]) -> list[Any]:
        texts = [list(c.request.segment_texts) for c in calls]
        return _checked(self._punctuate, texts, "punctuator")


def _checked(fn: Callable[[list[Any]], Sequence[Any]] | None, items: list[Any], stage: str):
    """``fn(items)``, one result per item (nothing to do: no call)."""
    if not items:
        return []
    if fn is None:
        raise RuntimeError(f"no {stage} for {len(items)} items")
    results = list(fn(items))
    if len(results) != len(items):
        raise RuntimeError(f"{stage} returned {len(results)} results for {len(items)} items")
    return results


# -- what a signal is recognized from ---------------------------------------------------


@dataclass(frozen=True)
class SpeechItem:
    """One recognizer item of a signal: a (packed) span and its samples. ``vad_ms``: the
    VAD segments it is made of, relative to its start (None: all of it is speech)."""

    start_ms: int
    end_ms: int
    audio: np.ndarray
    vad_ms: tuple[tuple[int, int], ...] | None = None


def speech_items(signal: np.ndarray, pieces: Sequence[PackedPiece]) -> list[SpeechItem]:
    """Packed VAD pieces of ``signal`` -> its items, sorted by start."""
    ordered = sorted(pieces, key=lambda p: p.segment.start_ms)
    return [
        SpeechItem(
            p.segment.start_ms,
            p.segment.end_ms,
            np.ascontiguousarray(p.segment.slice(signal), dtype=np.float32),
            p.members_relative_ms(),
        )
        for p in ordered
    ]


@dataclass(frozen=True)
class Route:
    """What the pipeline needs to know of the model a file goes to."""

    name: str
    # Re-decode rounds for speech a packed item's decode did not account for
    # (serve_app.core.coverage); 0 without packing (items are not decoded with times).
    redecode_rounds: int = 0
    # The model detects the language itself (asked once by the driver).
    detects_language: bool = False
    # A punctuation stage runs after stitching.
    punctuates: bool = False


@dataclass(frozen=True)
class SignalText:
    text: str
    segments: tuple[TranscriptSegment, ...]
    language: str | None


@dataclass
class Trace:
    """Per-file stage timings (seconds) and redecode counts, filled in by the steps."""

    timings_s: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.timings_s[stage] = self.timings_s.get(stage, 0.0) + seconds


# -- steps ------------------------------------------------------------------------------


def recognize_signal(
    items: Sequence[SpeechItem],
    route: Route,
    options: RecognitionOptions,
    *,
    deadline_unix_s: float | None = None,
    request_id: str | None = None,
    trace: Trace | None = None,
) -> Steps[SignalText]:
    """One signal's items -> its stitched (and punctuated) text.

    The first item error fails the signal (raised as its typed error at stitching), as a
    failed segment fails its request."""
    trace = trace or Trace()

    def job(audio: np.ndarray, opts: RecognitionOptions) -> SegmentJob:
        return SegmentJob(audio, opts, deadline_unix_s, request_id)

    started = time.perf_counter()
    options, probed = yield from _detect_language(items, route, options, job)
    outcomes = yield [
        Recognize(
            tuple(job(item.audio, options) for item in items),
            known=probed,
            spans_ms=tuple((item.start_ms, item.end_ms) for item in items),
        )
    ]
    results = per_item(outcomes[0], len(items))
    trace.add("recognize", time.perf_counter() - started)
    failed = any(isinstance(r, BaseException) for r in results)
    if route.redecode_rounds > 0 and results and not failed:
        started = time.perf_counter()
        redecoder = Redecoder(
            [ItemAudio(item.audio, item.vad_ms) for item in items],
            results,
            max_rounds=route.redecode_rounds,
        )
        # Every stretch of every item at once: they share forward passes downstream.
        while pending := redecoder.pending():
            outcomes = yield [Recognize(tuple(job(p.audio, options) for p in pending))]
            redecoder.accept(per_item(outcomes[0], len(pending)))
        results = redecoder.results()
        if redecoder.redecodes:
            trace.add("redecode", time.perf_counter() - started)
        _record_redecodes(route.name, redecoder)
    text, segments, language = stitch_segments(
        [(item.start_ms, item.end_ms) for item in items], results
    )
    if route.punctuates and options.punctuate is not False and text.strip():
        started = time.perf_counter()
        request = PunctuationRequest(tuple(s.text for s in segments), request_id, deadline_unix_s)
        (texts,) = yield [Punctuate(request)]
        raise_first([texts])
        text, segments = apply_texts(segments, list(texts))
        trace.add("punctuate", time.perf_counter() - started)
    return SignalText(text, segments, language or options.language)


def _detect_language(
    items: Sequence[SpeechItem],
    route: Route,
    options: RecognitionOptions,
    job: Callable[[np.ndarray, RecognitionOptions], SegmentJob],
) -> Steps[tuple[RecognitionOptions, dict[int, SegmentTranscript]]]:
    """Language detection once per file (serve_app.core.language): the first item alone,
    the next few too when the model is unsure; their results are kept when they agree."""
    if options.language is not None or not items or not route.detects_language:
        return options, {}
    probes = [item.audio for item in items[:PROBE_ITEMS]]
    (first,) = yield [Recognize((job(probes[0], options),))]
    first = per_item(first, 1)
    probed: dict[int, SegmentTranscript] = {}
    if isinstance(first[0], SegmentTranscript):
        probed[0] = first[0]
        if probe_unsure(first[0]) and len(probes) > 1:
            (more,) = yield [Recognize(tuple(job(a, options) for a in probes[1:]))]
            more = per_item(more, len(probes) - 1)
            if all(isinstance(r, SegmentTranscript) for r in more):
                probed.update(enumerate(more, start=1))
            else:
                probed = {}
    if not probed:  # a failed probe: the normal pass decodes (and reports) it again
        return options, {}
    return decide_language(options, probed)


def diarize_signal(
    samples: np.ndarray,
    vad_segments: Sequence[SpeechSegment],
    options: DiarizationOptions,
    settings: DiarizationSettings,
    *,
    deadline_unix_s: float | None = None,
    request_id: str | None = None,
    trace: Trace | None = None,
) -> Steps[Diarization]:
    """Windows inside the signal's speech -> one embedding each -> clusters and turns.

    Raises ``AudioTooLongError`` at once (not when the steps run) when the signal is
    longer than ``settings.max_audio_s``, so no recognition or embedding starts."""
    check_diarization_size(len(samples) / SAMPLE_RATE_HZ, settings)
    return _diarize_steps(
        samples, vad_segments, options, settings, deadline_unix_s, request_id, trace
    )


def _diarize_steps(
    samples: np.ndarray,
    vad_segments: Sequence[SpeechSegment],
    options: DiarizationOptions,
    settings: DiarizationSettings,
    deadline_unix_s: float | None,
    request_id: str | None,
    trace: Trace | None,
) -> Steps[Diarization]:
    started = time.perf_counter()
    spans_s = speech_spans_s(samples, [(s.start_ms, s.end_ms) for s in vad_segments])
    windows = embedding_windows(spans_s, window_s=settings.window_s, hop_s=settings.hop_s)
    if not windows:
        return Diarization(turns=())
    jobs = tuple(
        EmbeddingJob(np.ascontiguousarray(a, dtype=np.float32), deadline_unix_s, request_id)
        for a in window_audio(samples, windows)
    )
    (outcome,) = yield [Embed(jobs)]
    embeddings = per_item(outcome, len(jobs))
    raise_first(embeddings)
    matrix = np.stack([np.asarray(e, dtype=np.float32) for e in embeddings])
    # Clustering is CPU work (scipy linkage over the file's windows).
    (diarization,) = yield [
        Offload(lambda: turns_from_embeddings(windows, matrix, spans_s, options, settings))
    ]
    raise_first([diarization])
    if trace is not None:
        trace.add("diarize", time.perf_counter() - started)
    return diarization


@dataclass(frozen=True)
class FileText:
    text: str
    segments: tuple[TranscriptSegment, ...]
    language: str | None
    # Each speaker's talk time (s) in order of first appearance; empty without speakers.
    talk_time_s: dict[str, float] = field(default_factory=dict)


def assemble(
    signals: Sequence[SignalText],
    *,
    channel_names: Sequence[str] = (),
    diarization: Diarization | None = None,
) -> FileText:
    """The file's transcript: one signal as it is (its segments labelled with diarized
    speakers), or split channels labelled with their names and merged by start time."""
    language = next((s.language for s in signals if s.language), None)
    if channel_names:
        pieces = merge_channels([(n, s.segments) for n, s in zip(channel_names, signals)])
        text = join_texts([p.text for p in pieces])
        return FileText(text, pieces, language, talk_time_s(pieces, channel_names))
    (signal,) = signals
    if diarization is None:
        return FileText(signal.text, signal.segments, language)
    pieces = label_segments(signal.segments, diarization)
    return FileText(signal.text, pieces, language, diarization.talk_time_s)


def _record_redecodes(model: str, redecoder: Redecoder) -> None:
    for reason, count in redecoder.redecodes.items():
        observability.redecodes_total().inc(count, tags={"model": model, "reason": reason})
    for reason, count in redecoder.retimed.items():
        observability.retimed_items_total().inc(count, tags={"model": model, "reason": reason})


def merge_options(
    default: RecognitionOptions, given: RecognitionOptions | None
) -> RecognitionOptions:
    """A request's options over its model's defaults."""
    if given is None:
        return default
    return RecognitionOptions(
        language=given.language or default.language,
        prompt=given.prompt or default.prompt,
        hotwords=given.hotwords or default.hotwords,
        word_timestamps=given.word_timestamps or default.word_timestamps,
        task=given.task,
        punctuate=default.punctuate if given.punctuate is None else given.punctuate,
    )


def unwrap_error(exc: BaseException) -> BaseException:
    """Ray wraps errors raised in another replica; find the typed one underneath."""
    seen = 0
    while not isinstance(exc, AsrError) and seen < 5:
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc = cause
        seen += 1
    return exc


__all__ = [
    "BlockExecutor",
    "Call",
    "Embed",
    "FileText",
    "ItemResult",
    "Offload",
    "Punctuate",
    "Recognize",
    "Route",
    "SignalText",
    "SpeechItem",
    "Steps",
    "Trace",
    "assemble",
    "diarize_signal",
    "gather",
    "merge_options",
    "recognize_signal",
    "run_lockstep",
    "speech_items",
    "unwrap_error",
]
