"""Re-decoding what a packed item's decode missed: splice the stretches' text into the
item's, round after round (the checks that find the stretches are in
:mod:`serve_app.core.coverage`). One :class:`Redecoder` per file, used by the pipeline's
recognition steps online and offline."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from serve_app.core.coverage import (
    _SAMPLES_PER_MS,
    DEFAULT_SETTINGS,
    CoverageSettings,
    ItemCheck,
    check_item,
    implausible_timing,
    placed_spans,
    said_spans,
    speech_frames,
)
from serve_app.core.text import WORD, is_unspaced, join_texts, units
from serve_app.core.types import SegmentTranscript, TextSpan, WordTiming

logger = logging.getLogger(__name__)


# -- splicing ---------------------------------------------------------------------------


def _overlap_units(previous: str, text: str, max_units: int = 4) -> int:
    """How many leading words of ``text`` repeat the trailing words of ``previous``
    (a stretch that starts a little early re-decodes the last word before it)."""
    prev, cur = units(previous), units(text)
    for k in range(min(max_units, len(prev), len(cur)), 0, -1):
        if prev[-k:] == cur[:k]:
            return k
    return 0


# A re-decoded span longer than _overlap_units' reach that says again what the span
# before it ended with (this share of its words, in order) is a repeat, not new speech.
REPEAT_MIN_UNITS = 5
REPEAT_SIMILARITY = 0.8


def _repeats(previous: str, text: str) -> bool:
    """Whether ``text`` only repeats the end of ``previous`` (a stretch decoded again
    over speech its item had already decoded, e.g. under compressed stepped times).
    :func:`splice` asks only where that can be the case (:func:`_may_say_again`)."""
    from difflib import SequenceMatcher

    prev, cur = units(previous), units(text)
    if len(cur) < REPEAT_MIN_UNITS or len(cur) > len(prev):
        return False
    return SequenceMatcher(None, prev[-len(cur) :], cur).ratio() >= REPEAT_SIMILARITY


def _drop_leading_units(text: str, count: int) -> str:
    """``text`` without its first ``count`` units (as ``serve_app.core.text.units`` counts)."""
    pos = 0
    for _ in range(count):
        match = WORD.search(text, pos)
        if match is None:
            return ""
        word = match.group(0)
        if any(is_unspaced(ch) for ch in word):  # one unit per unspaced character
            pos = match.start() + 1
        else:
            pos = match.end()
    # Punctuation the dropped words left behind (Latin and CJK full-width).
    return text[pos:].lstrip(" ,.;:!?" + "\uff0c\u3002\u3001\uff1b\uff1a\uff01\uff1f")


def _may_say_again(check: ItemCheck, previous: int | None, previous_span: TextSpan, k: int) -> bool:
    """Whether stretch ``k``'s text can repeat what the span before it (of stretch
    ``previous``, or the item's own when None) said: only where their audio can overlap.
    That is a stretch padded into the speech of the span before it (Whisper's span ends
    are ~0.3 s off), or any item span whose times were estimates (the item decoded the
    stretch's speech and put it earlier). Stretches are decoded from their own audio,
    and fine times are trusted: a word or a sentence said again there was said again
    (a hold message, a caller's "okay ... okay")."""
    start_ms = check.stretches[k].start_ms
    if previous is None:
        slack_ms = DEFAULT_SETTINGS.span_slack_ms
        return check.retimed is not None or previous_span.end_s * 1000 + slack_ms > start_ms
    return previous != k and check.stretches[previous].end_ms > start_ms


def splice(
    item: SegmentTranscript, check: ItemCheck, parts: Sequence[SegmentTranscript]
) -> SegmentTranscript:
    """The item's spans (or none, when degenerate) plus each stretch's spans, moved to the
    item's time, in time order; one text made of them."""
    if len(parts) != len(check.stretches):
        raise ValueError(f"{len(parts)} results for {len(check.stretches)} stretches")
    # (start_s, stretch, index, span); stretch -1: the item's own span (first at a tie)
    timed: list[tuple[float, int, int, TextSpan]] = []
    words: list[WordTiming] = [] if check.replace else list(item.words)
    new_words: list[WordTiming] = []  # the stretches' words
    repeated: list[TextSpan] = []  # stretch spans dropped as repeats
    language = item.language
    if not check.replace:
        timed.extend((s.start_s, -1, i, s) for i, s in enumerate(check.spans))
    for k, (stretch, part) in enumerate(zip(check.stretches, parts, strict=True)):
        offset_s, end_s = stretch.start_ms / 1000, stretch.end_ms / 1000
        language = language or part.language
        spans = [s for s in part.spans if s.text.strip()]
        if not spans and part.text.strip():
            spans = [TextSpan(0.0, end_s - offset_s, part.text.strip())]
        for i, span in enumerate(spans):
            start = min(offset_s + max(span.start_s, 0.0), end_s)
            shifted = TextSpan(start, min(max(offset_s + span.end_s, start), end_s), span.text)
            timed.append((start, k, i, shifted))
        new_words.extend(
            WordTiming(w.start_s + offset_s, w.end_s + offset_s, w.word) for w in part.words
        )
    timed.sort(key=lambda t: t[:3])
    merged: list[TextSpan] = []
    sources: list[int | None] = []  # each merged span's stretch (None: the item's own)
    for _, stretch, _, span in timed:
        k = stretch if stretch >= 0 else None
        if k is not None and merged and _may_say_again(check, sources[-1], merged[-1], k):
            if _repeats(merged[-1].text, span.text):
                repeated.append(span)
                continue
            drop = _overlap_units(merged[-1].text, span.text)
            if drop:
                span = replace(span, text=_drop_leading_units(span.text, drop))
        if span.text.strip():
            if merged and merged[-1].end_s > span.start_s:
                # A stretch starts (padded) before the span it follows ends: no two
                # segments (subtitle cues) overlap.
                merged[-1] = replace(merged[-1], end_s=max(merged[-1].start_s, span.start_s))
            merged.append(span)
            sources.append(k)
    words.extend(
        w for w in new_words if not any(r.start_s <= w.start_s < r.end_s for r in repeated)
    )
    words.sort(key=lambda w: w.start_s)
    return SegmentTranscript(
        text=join_texts([s.text for s in merged]),
        words=tuple(words),
        language=language,
        spans=tuple(merged),
    )


def retime_only(
    samples: np.ndarray,
    result: SegmentTranscript,
    speech_ms: Sequence[tuple[int, int]] | None = None,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> tuple[SegmentTranscript, str | None]:
    """``result`` with its spans re-timed when implausible (for items not checked again)."""
    spans = said_spans(result)
    if not spans:
        return result, None
    mask = speech_frames(samples, speech_ms, settings)
    why = implausible_timing(spans, mask, settings)
    placed = placed_spans(spans, why, mask, speech_ms, settings)
    if why is None and placed == spans:
        return result, None
    return replace(result, spans=placed), why


# -- rounds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemAudio:
    """One decoded item: its samples and, where known, its VAD segments (item-relative ms)."""

    samples: np.ndarray
    speech_ms: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class RedecodeJob:
    """Audio to recognise in the next round, for original item ``item``."""

    item: int
    audio: np.ndarray
    reason: str


@dataclass
class _Node:
    item: int
    samples: np.ndarray
    speech_ms: tuple[tuple[int, int], ...] | None
    result: object
    check: ItemCheck | None = None
    children: list[_Node] = field(default_factory=list)


def _clip_speech(
    speech_ms: tuple[tuple[int, int], ...] | None, start_ms: int, end_ms: int
) -> tuple[tuple[int, int], ...] | None:
    if speech_ms is None:
        return None
    return tuple(
        (max(a, start_ms) - start_ms, min(b, end_ms) - start_ms)
        for a, b in speech_ms
        if min(b, end_ms) > max(a, start_ms)
    )


class Redecoder:
    """Plan -> recognise -> splice rounds over many items (see the module docstring).

    Usage (both the online service and the offline job)::

        redecoder = Redecoder(items, results)
        while jobs := redecoder.pending():
            redecoder.accept(recognise_all(jobs))   # one list in, one list out
        results = redecoder.results()

    A failed result (an exception) is kept as it is: the caller fails the file, as for a
    failed first decode. Not thread-safe (one per request or block).
    """

    def __init__(
        self,
        items: Sequence[ItemAudio],
        results: Sequence[object],
        *,
        max_rounds: int = 2,
        settings: CoverageSettings = DEFAULT_SETTINGS,
    ) -> None:
        if len(items) != len(results):
            raise ValueError(f"{len(results)} results for {len(items)} items")
        self.max_rounds = max_rounds
        self.settings = settings
        self._roots = [
            _Node(i, item.samples, item.speech_ms, result)
            for i, (item, result) in enumerate(zip(items, results, strict=True))
        ]
        self._frontier: list[_Node] = list(self._roots)
        self._waiting: list[_Node] = []
        self.rounds_done = 0
        # Re-decode jobs by reason, and items whose span times were re-timed, by reason.
        self.redecodes: Counter[str] = Counter()
        self.retimed: Counter[str] = Counter()

    def pending(self) -> list[RedecodeJob]:
        """Check the items decoded last round; the jobs of the next round ([]: done)."""
        if self._waiting:
            raise RuntimeError("accept() the results of the pending jobs first")
        if self.rounds_done >= self.max_rounds:
            return []
        jobs: list[RedecodeJob] = []
        for node in self._frontier:
            if not isinstance(node.result, SegmentTranscript):
                continue
            check = check_item(node.samples, node.result, node.speech_ms, self.settings)
            node.check = check
            if check.retimed:
                self.retimed[check.retimed] += 1
            for stretch in check.stretches:
                lo, hi = stretch.start_ms * _SAMPLES_PER_MS, stretch.end_ms * _SAMPLES_PER_MS
                child = _Node(
                    node.item,
                    node.samples[lo:hi],
                    _clip_speech(node.speech_ms, stretch.start_ms, stretch.end_ms),
                    None,
                )
                node.children.append(child)
                self._waiting.append(child)
                jobs.append(RedecodeJob(node.item, child.samples, stretch.reason))
                logger.debug(
                    "item %d: re-decode %d-%d ms (%s)",
                    node.item,
                    stretch.start_ms,
                    stretch.end_ms,
                    stretch.reason,
                )
                self.redecodes[stretch.reason] += 1
        self._frontier = []
        if jobs:
            logger.debug("re-decode round %d: %d stretches", self.rounds_done + 1, len(jobs))
        return jobs

    def accept(self, results: Sequence[object]) -> None:
        """The results of the last :meth:`pending` jobs, in the same order."""
        if len(results) != len(self._waiting):
            raise ValueError(f"{len(results)} results for {len(self._waiting)} jobs")
        for node, result in zip(self._waiting, results, strict=True):
            node.result = result
        self._frontier, self._waiting = self._waiting, []
        self.rounds_done += 1

    def results(self) -> list[object]:
        """One result per original item: spliced transcripts, or the first failure."""
        return [self._resolve(node) for node in self._roots]

    def _resolve(self, node: _Node) -> object:
        result = node.result
        if not isinstance(result, SegmentTranscript):
            return result
        if node.check is None:  # decoded in the last round: not checked again
            retimed, why = retime_only(node.samples, result, node.speech_ms, self.settings)
            if why:
                self.retimed[why] += 1
            return retimed
        parts = [self._resolve(child) for child in node.children]
        for part in parts:
            if not isinstance(part, SegmentTranscript):
                return part
        if not node.children and node.check.spans == said_spans(result):
            return result  # nothing re-decoded, re-timed or trimmed
        return splice(result, node.check, parts)  # type: ignore[arg-type]
