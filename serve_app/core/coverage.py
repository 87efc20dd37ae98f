"""Did an item's decode account for all of its speech? (pure: numpy only, no Ray or torch)

A packed Whisper item (several VAD segments joined into <= 30 s, decoded with timestamp
tokens) can come back incomplete: the decode stops early and the item's last sentence is
lost, or it skips a sentence in the middle, or it loops on one phrase. faster-whisper's
sequential ``transcribe`` does not lose that speech because it *seeks on* from the last
timestamp and decodes the rest. This module does the same for batched items, in rounds:

1. :func:`check_item` looks at one item's audio, the :class:`SegmentTranscript` its decode
   returned and (where known) the VAD segments inside it, and finds the *stretches* of
   speech no returned span covers: the tail after the last span and gaps between spans,
   where the audio still has speech (inside a VAD segment and loud relative to the item's
   own speech level). It also flags degenerate output (a repetition loop, zlib compression
   ratio over 2.4 as faster-whisper uses, text far too long or short for the speech) and
   then plans the whole item again, split at its VAD segments or quiet points. Span times
   that say nothing (a span over no speech, spans all of one length) are re-timed from the
   speech, order kept; whole-second times (tiny.en's, often, on noisy packed items) are
   moved to the pauses nearest them and still say where speech is missing.
2. :class:`Redecoder` drives the rounds for every item of a request (online) or a block of
   files (offline): :meth:`Redecoder.pending` gives the audio of *all* stretches of *all*
   items at once, so they ride in the same forward passes as ordinary items; the caller
   recognises them through its usual path and hands the results to
   :meth:`Redecoder.accept`; re-decoded stretches are checked again in the next round, at
   most ``max_rounds`` rounds in all, and :meth:`Redecoder.results` splices everything
   back into one transcript per item, times in the item's time.

A stretch whose re-decode comes back empty is accepted as silence: the loop always ends.
Times here are integer milliseconds relative to the item (spans: seconds, as returned).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.text import compression_ratio, has_repetition_loop, text_weight
from serve_app.core.types import SegmentTranscript, TextSpan

logger = logging.getLogger(__name__)

FRAME_MS = 20
_FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
_SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000

# Reasons (metric label values).
TAIL = "tail"
GAP = "gap"
REPETITION = "repetition"
COMPRESSION = "compression_ratio"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
EMPTY = "empty"  # nothing decoded (or only a sliver) from an item that has speech
RETIME_OUTSIDE = "outside_speech"
RETIME_STEPS = "fixed_steps"
RETIME_WHOLE = "whole_seconds"


@dataclass(frozen=True)
class CoverageSettings:
    """Thresholds of the checks (defaults tuned on read speech, English and Mandarin)."""

    # Uncovered speech shorter than this (speech frames, not wall time) is ignored:
    # breaths, a word's tail past a slightly early timestamp.
    min_uncovered_speech_ms: int = 700
    # ... unless it is a whole speech island (pauses on both sides, no span near): then
    # this much is enough ("hello world" on an 8 kHz GSM call passes the energy test for
    # 0.68 s; a 0.4 s click between two sentences still does not count).
    min_uncovered_island_ms: int = 500
    # Whisper's timestamps are ~0.1-0.3 s off at sentence edges: a span covers this much
    # more on each side before speech next to it counts as uncovered.
    span_slack_ms: int = 300
    # Audio kept around the speech of a stretch (the model needs onset context).
    stretch_pad_ms: int = 200
    # A span edge over a pause longer than this (times that run on through silence, e.g.
    # whole seconds of two spans, too few to tell) moves to ``stretch_pad_ms`` from the
    # speech it holds: a subtitle cue, or a speaker's turn, does not cover the pause.
    max_edge_silence_ms: int = 1000
    # A frame is speech when it lies in a VAD segment and its RMS is within this many dB
    # of the item's speech level (95th percentile of its frames) and above the floor.
    relative_floor_db: float = 25.0
    absolute_floor_rms: float = 1e-3
    # Pauses shorter than this do not split speech islands (used for re-timing/splitting).
    island_gap_ms: int = 200
    # Whole-second span times (tiny.en, often) are the speech's to about a second: each
    # boundary moves to the pause nearest it within this distance.
    whole_second_snap_ms: int = 1200
    # Speech starting after a pause this close before the last span's end is not that
    # span's: a decode that stopped early ends its last span where the next sentence
    # (never decoded) starts.
    tail_lookback_ms: int = 500
    # faster-whisper's compression_ratio_threshold.
    compression_ratio_threshold: float = 2.4
    # A word (or CJK character) n-gram repeated back to back this many times is a loop.
    min_loop_repeats: int = 4
    max_loop_ngram: int = 6
    # Text weight (Latin letters 1, CJK characters 3) per second of speech. Read speech is
    # ~12-16 (English) or ~12-15 (4-5 Mandarin characters); outside these it is broken.
    max_weight_per_speech_s: float = 35.0
    min_weight_per_speech_s: float = 2.0
    # The "too short" check needs this much speech to mean anything.
    min_speech_for_short_check_ms: int = 4000
    # A stretch that is nearly the whole item would decode to the same thing again: the
    # item is split instead (VAD segments / quiet points).
    whole_item_fraction: float = 0.9
    # Pieces shorter than this are not split further.
    min_split_ms: int = 2000


DEFAULT_SETTINGS = CoverageSettings()


@dataclass(frozen=True)
class Stretch:
    """Part of an item to decode again (item-relative ms)."""

    start_ms: int
    end_ms: int
    reason: str


@dataclass(frozen=True)
class ItemCheck:
    """What :func:`check_item` found for one item.

    ``spans``: the item's spans, re-timed when their times were implausible.
    ``replace``: the item's own text is dropped (degenerate) and ``stretches`` cover it.
    """

    spans: tuple[TextSpan, ...]
    stretches: tuple[Stretch, ...] = ()
    replace: bool = False
    retimed: str | None = None
    degenerate: str | None = None


# -- frames and speech ------------------------------------------------------------------


def frame_rms(samples: np.ndarray) -> np.ndarray:
    """RMS of consecutive 20 ms frames (a last partial frame counts as a frame)."""
    n = len(samples)
    count = -(-n // _FRAME_SAMPLES)
    padded = np.zeros(count * _FRAME_SAMPLES, dtype=np.float64)
    padded[:n] = samples
    return np.sqrt(np.mean(np.square(padded.reshape(count, _FRAME_SAMPLES)), axis=1))


def speech_frames(
    samples: np.ndarray,
    speech_ms: Sequence[tuple[int, int]] | None = None,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> np.ndarray:
    """Boolean per 20 ms frame: speech by the VAD segments (if given) AND by energy.

    Energy is judged against the item's own speech level, so a quiet recording is not
    silence and a loud one's pauses are not speech. With a single VAD span over the whole
    item (FSMN-VAD does this on fluent read speech) the energy finds the pauses.
    """
    rms = frame_rms(samples)
    if len(rms) == 0:
        return np.zeros(0, dtype=bool)
    in_vad = np.ones(len(rms), dtype=bool)
    if speech_ms is not None:
        in_vad[:] = False
        for start_ms, end_ms in speech_ms:
            in_vad[max(0, start_ms // FRAME_MS) : max(0, -(-end_ms // FRAME_MS))] = True
    audible = in_vad & (rms > settings.absolute_floor_rms)
    if not audible.any():
        return audible
    level_db = float(np.percentile(20 * np.log10(rms[audible]), 95))
    floor = 10 ** ((level_db - settings.relative_floor_db) / 20)
    return audible & (rms > floor)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame index runs of True."""
    if len(mask) == 0:
        return []
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def speech_islands(
    mask: np.ndarray, settings: CoverageSettings = DEFAULT_SETTINGS
) -> list[tuple[int, int]]:
    """Speech frames joined across pauses shorter than ``island_gap_ms`` (ms intervals)."""
    islands: list[list[int]] = []
    max_gap = settings.island_gap_ms // FRAME_MS
    for start, end in _runs(mask):
        if islands and start - islands[-1][1] <= max_gap:
            islands[-1][1] = end
        else:
            islands.append([start, end])
    return [(s * FRAME_MS, e * FRAME_MS) for s, e in islands]


# -- text checks ------------------------------------------------------------------------


def degenerate_reason(
    result: SegmentTranscript, speech_ms: int, settings: CoverageSettings = DEFAULT_SETTINGS
) -> str | None:
    """Why ``result`` cannot be the transcript of ``speech_ms`` of speech (None: it can)."""
    text = result.text.strip()
    ratio = result.compression_ratio
    if ratio is None:
        ratio = compression_ratio(text)
    if text and ratio > settings.compression_ratio_threshold:
        return COMPRESSION
    if text and has_repetition_loop(text, settings.min_loop_repeats, settings.max_loop_ngram):
        return REPETITION
    weight = text_weight(text)
    speech_s = speech_ms / 1000
    if weight > settings.max_weight_per_speech_s * max(speech_s, 1.0) + 20:
        return TOO_LONG
    if (
        speech_ms >= settings.min_speech_for_short_check_ms
        and weight < settings.min_weight_per_speech_s * speech_s
    ):
        return TOO_SHORT
    return None


# -- span timing ------------------------------------------------------------------------


def implausible_timing(
    spans: Sequence[TextSpan], mask: np.ndarray, settings: CoverageSettings = DEFAULT_SETTINGS
) -> str | None:
    """Why the spans' times cannot be taken as they are (None: they can).

    ``fixed_steps``: every span as long as the next (times that say nothing).
    ``whole_seconds``: whole-second times of varying steps, what tiny.en often returns for
    a packed item: each start is its sentence's to about a second (the true start or just
    before it), and the last end is often where the next sentence starts, decoded or not.
    ``outside_speech``: a span over no speech.
    """
    if not spans or not mask.any():
        return None
    inner = [t for s in spans for t in (s.start_s, s.end_s) if t > 0.01]
    if len(spans) >= 3 and len(inner) >= 4:
        steps = [round(s.end_s - s.start_s, 2) for s in spans]
        if len(set(steps)) == 1:
            return RETIME_STEPS
        if all(abs(t - round(t)) < 0.011 for t in inner[:-1]):
            return RETIME_WHOLE
    for span in spans:
        lo, hi = int(span.start_s * 1000) // FRAME_MS, -(-int(span.end_s * 1000) // FRAME_MS)
        if hi - lo >= 300 // FRAME_MS and mask[lo:hi].mean() < 0.05:
            return RETIME_OUTSIDE
    return None


def trim_to_speech(
    spans: Sequence[TextSpan], mask: np.ndarray, settings: CoverageSettings = DEFAULT_SETTINGS
) -> tuple[TextSpan, ...]:
    """``spans`` with each edge that lies over more than ``max_edge_silence_ms`` of
    non-speech moved to ``stretch_pad_ms`` from the speech the span holds. A span over no
    speech at all is kept (its text says something was there)."""
    out = []
    for span in spans:
        lo = max(0, int(span.start_s * 1000) // FRAME_MS)
        hi = min(len(mask), -(-int(span.end_s * 1000) // FRAME_MS))
        inside = np.flatnonzero(mask[lo:hi]) if hi > lo else np.zeros(0, dtype=np.int64)
        if not len(inside):
            out.append(span)
            continue
        first_s = (lo + int(inside[0])) * FRAME_MS / 1000
        last_s = (lo + int(inside[-1]) + 1) * FRAME_MS / 1000
        limit_s, pad_s = settings.max_edge_silence_ms / 1000, settings.stretch_pad_ms / 1000
        start_s, end_s = span.start_s, span.end_s
        if first_s - start_s > limit_s:
            start_s = first_s - pad_s
        if end_s - last_s > limit_s:
            end_s = last_s + pad_s
        out.append(
            span
            if (start_s, end_s) == (span.start_s, span.end_s)
            else replace(span, start_s=round(start_s, 3), end_s=round(end_s, 3))
        )
    return tuple(out)


def said_spans(result: SegmentTranscript) -> tuple[TextSpan, ...]:
    """The result's spans that hold text."""
    return tuple(s for s in result.spans if s.text.strip())


def placed_spans(
    spans: tuple[TextSpan, ...],
    why: str | None,
    mask: np.ndarray,
    speech_ms: Sequence[tuple[int, int]] | None,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> tuple[TextSpan, ...]:
    """``spans`` put on the speech: re-timed for ``why`` (:func:`implausible_timing`'s
    answer; whole seconds snapped to the pauses), then edges over long pauses trimmed."""
    if why == RETIME_WHOLE:
        spans = snap_spans(spans, mask, settings)
    elif why is not None:
        spans = retime_spans(spans, mask, settings, speech_ms)
    return trim_to_speech(spans, mask, settings)


def snap_spans(
    spans: Sequence[TextSpan], mask: np.ndarray, settings: CoverageSettings = DEFAULT_SETTINGS
) -> tuple[TextSpan, ...]:
    """Whole-second ``spans`` moved onto the speech, their own times kept as the guide.

    Each boundary between two spans moves to the pause between speech islands nearest it
    (within ``whole_second_snap_ms``; pauses in time order, each used once): the span
    before ends where that pause starts, the next starts where it ends. The first start
    moves to the speech starting near it; the last end to a pause near it, or to the end
    of the speech it runs past. Text and order are kept; a boundary with no pause near it
    stays where it was. Unlike :func:`retime_spans` this never matches spans to segments
    by count, which shifts every text by one when the VAD joined two sentences and the
    decode skipped one.
    """
    islands = speech_islands(mask, settings)
    if not spans or not islands:
        return tuple(spans)
    near = settings.whole_second_snap_ms
    pauses = [(islands[k][1], islands[k + 1][0]) for k in range(len(islands) - 1)]

    def distance(t_ms: float, pause: tuple[int, int]) -> float:
        return max(pause[0] - t_ms, t_ms - pause[1], 0.0)

    starts = [s.start_s * 1000 for s in spans]
    ends = [s.end_s * 1000 for s in spans]
    first_free = 0  # pauses before this one are taken by earlier boundaries
    for i in range(len(spans)):
        # The boundary after span i: the next span's start, or the last span's end.
        t = starts[i + 1] if i + 1 < len(spans) else ends[i]
        floor = starts[i]
        options = [
            k
            for k in range(first_free, len(pauses))
            if pauses[k][0] > floor and distance(t, pauses[k]) <= near
        ]
        if options:
            k = min(options, key=lambda k: distance(t, pauses[k]))
            ends[i] = float(pauses[k][0])
            if i + 1 < len(spans):
                starts[i + 1] = float(pauses[k][1])
            first_free = k + 1
        elif i + 1 == len(spans) and ends[i] > islands[-1][1]:
            ends[i] = float(max(islands[-1][1], starts[i]))
    first = next((a for a, b in islands if b > starts[0]), None)
    if first is not None and abs(first - starts[0]) <= near:
        starts[0] = float(first) if first < ends[0] else starts[0]
    return _in_order(spans, starts, ends)


def _in_order(
    spans: Sequence[TextSpan], starts: Sequence[float], ends: Sequence[float]
) -> tuple[TextSpan, ...]:
    """``spans`` with new times (ms), made monotone: no span starts before the one before
    it ends, none ends before it starts."""
    out: list[TextSpan] = []
    last_ms = 0.0
    for span, a, b in zip(spans, starts, ends, strict=True):
        a = max(a, last_ms)
        b = max(b, a)
        out.append(TextSpan(a / 1000, b / 1000, span.text))
        last_ms = b
    return tuple(out)


def retime_spans(
    spans: Sequence[TextSpan],
    mask: np.ndarray,
    settings: CoverageSettings = DEFAULT_SETTINGS,
    speech_ms: Sequence[tuple[int, int]] | None = None,
) -> tuple[TextSpan, ...]:
    """New times for ``spans`` (order and text kept) from the VAD segments or speech islands.

    With as many VAD segments (or else speech islands) as spans, one span per segment
    (island). Otherwise each span gets a share of the speech time in proportion to its
    text, and each boundary moves to the nearest pause between islands within 1 s.
    """
    islands = speech_islands(mask, settings)
    if not spans or not islands:
        return tuple(spans)
    for runs in (list(speech_ms or ()), islands):
        if len(runs) == len(spans):
            return tuple(
                TextSpan(a / 1000, b / 1000, s.text) for s, (a, b) in zip(spans, runs, strict=True)
            )
    weights = np.array([max(text_weight(s.text), 1.0) for s in spans])
    shares = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    lengths = np.array([b - a for a, b in islands], dtype=np.float64)
    speech_at = np.concatenate([[0.0], np.cumsum(lengths)])

    def at(fraction: float) -> float:  # speech-time fraction -> item time (ms)
        target = fraction * speech_at[-1]
        k = int(np.clip(np.searchsorted(speech_at, target, side="right") - 1, 0, len(islands) - 1))
        return islands[k][0] + (target - speech_at[k])

    pauses = [(islands[k][1], islands[k + 1][0]) for k in range(len(islands) - 1)]
    bounds: list[tuple[float, float]] = []  # (end of span i-1, start of span i)
    for fraction in shares[1:-1]:
        t = at(float(fraction))
        nearest = min(pauses, key=lambda p: abs((p[0] + p[1]) / 2 - t), default=None)
        if nearest is not None and abs((nearest[0] + nearest[1]) / 2 - t) <= 1000:
            bounds.append((float(nearest[0]), float(nearest[1])))
        else:
            bounds.append((t, t))
    starts = [float(islands[0][0])] + [b[1] for b in bounds]
    ends = [b[0] for b in bounds] + [float(islands[-1][1])]
    return _in_order(spans, starts, ends)


# -- the check --------------------------------------------------------------------------


def stepped_tail(
    spans: Sequence[TextSpan],
    speech_ms: Sequence[tuple[int, int]] | None,
    duration_ms: int,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> Stretch | None:
    """The VAD segments a decode with fixed-step timestamps (every span one length)
    never reached.

    Such times cannot say where inside the item speech is missing, so the item is
    re-timed, not searched for gaps. But when it has more VAD segments than spans and the
    segments left over all start after the last timestamp, the decode stopped before them:
    those segments are the item's tail, decoded again. (Whole-second times of varying
    steps, e.g. three spans at 0/7/15/22 s with a fourth sentence at 22.1-26.0 s lost, are
    snapped to the pauses and searched like fine times: :func:`snap_spans`.)
    """
    if not spans or not speech_ms or len(spans) >= len(speech_ms):
        return None
    last_end_ms = max(int(s.end_s * 1000) for s in spans)
    after = [(a, b) for a, b in speech_ms if a >= last_end_ms]
    if not after or len(spans) > len(speech_ms) - len(after):
        return None
    if sum(b - a for a, b in after) < settings.min_uncovered_speech_ms:
        return None
    start = max(0, after[0][0] - settings.stretch_pad_ms)
    return Stretch(start, min(duration_ms, after[-1][1] + settings.stretch_pad_ms), TAIL)


def uncovered_stretches(
    mask: np.ndarray,
    spans: Sequence[TextSpan],
    duration_ms: int,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> list[Stretch]:
    """Stretches of speech outside every span (tail and gaps; before the first span too).

    Each span covers ``span_slack_ms`` past its ends, except that the last span never
    covers speech that starts after a pause within ``tail_lookback_ms`` of its end.
    """
    covered = np.zeros(len(mask), dtype=bool)
    slack = settings.span_slack_ms
    last = max(range(len(spans)), key=lambda i: spans[i].end_s, default=None)
    islands = speech_islands(mask, settings) if spans else []
    last_end_frame = 0  # where the last span's cover ends: speech after it is the tail
    for i, span in enumerate(spans):
        start_ms, end_ms = int(span.start_s * 1000), int(span.end_s * 1000)
        hi_ms = end_ms + slack
        if i == last:
            after = end_ms - settings.tail_lookback_ms
            nxt = next((a for a, _ in islands if a >= after and a > start_ms), None)
            if nxt is not None:
                hi_ms = min(hi_ms, nxt)
            last_end_frame = max(0, hi_ms // FRAME_MS)
        lo = max(0, (start_ms - slack) // FRAME_MS)
        hi = max(0, -(-hi_ms // FRAME_MS))
        covered[lo:hi] = True
    out = []
    for lo, hi in _runs(~covered):
        speech = np.flatnonzero(mask[lo:hi])
        lo_ms, hi_ms = lo * FRAME_MS, hi * FRAME_MS
        whole = any(lo_ms <= a and b <= hi_ms for a, b in islands)
        least = settings.min_uncovered_island_ms if whole else settings.min_uncovered_speech_ms
        if len(speech) * FRAME_MS < least:
            continue
        first, last = lo + int(speech[0]), lo + int(speech[-1]) + 1
        start = max(0, first * FRAME_MS - settings.stretch_pad_ms)
        end = min(duration_ms, last * FRAME_MS + settings.stretch_pad_ms)
        out.append(Stretch(start, end, TAIL if lo >= last_end_frame else GAP))
    return out


def split_points(
    samples: np.ndarray,
    mask: np.ndarray,
    speech_ms: Sequence[tuple[int, int]] | None,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> list[tuple[int, int]]:
    """Pieces to re-decode a whole item in: its VAD segments if several, else two halves
    cut at the pause (or the quietest frame) nearest its middle; [] if too short to split."""
    duration_ms = len(samples) // _SAMPLES_PER_MS
    if speech_ms is not None and len(speech_ms) >= 2:
        return [(max(0, a), min(duration_ms, b)) for a, b in speech_ms if b > a]
    if duration_ms < settings.min_split_ms:
        return []
    middle = duration_ms / 2
    lo, hi = duration_ms // 4, 3 * duration_ms // 4
    islands = speech_islands(mask, settings)
    pauses = [
        (islands[k][1] + islands[k + 1][0]) // 2
        for k in range(len(islands) - 1)
        if lo <= (islands[k][1] + islands[k + 1][0]) // 2 <= hi
    ]
    if pauses:
        cut = min(pauses, key=lambda t: abs(t - middle))
    else:  # no pause: the quietest frame of the middle half (a word boundary, likely)
        rms = frame_rms(samples)[lo // FRAME_MS : hi // FRAME_MS]
        cut = lo + int(np.argmin(rms)) * FRAME_MS + FRAME_MS // 2 if len(rms) else duration_ms // 2
    return [(0, cut), (cut, duration_ms)]


def check_item(
    samples: np.ndarray,
    result: SegmentTranscript,
    speech_ms: Sequence[tuple[int, int]] | None = None,
    settings: CoverageSettings = DEFAULT_SETTINGS,
) -> ItemCheck:
    """Check one decoded item (see the module docstring). Pure; never raises on odd input."""
    duration_ms = len(samples) // _SAMPLES_PER_MS
    mask = speech_frames(samples, speech_ms, settings)
    speech_total_ms = int(mask.sum()) * FRAME_MS
    spans = said_spans(result)
    retimed = implausible_timing(spans, mask, settings)
    tail = None
    if retimed == RETIME_STEPS:
        tail = stepped_tail(spans, speech_ms, duration_ms, settings)
    if tail is not None:
        # The spans belong to the VAD segments before the undecoded ones.
        head_ms = tail.start_ms + settings.stretch_pad_ms
        head_mask = mask.copy()
        head_mask[head_ms // FRAME_MS :] = False
        head = [(a, b) for a, b in speech_ms or () if a < head_ms]
        spans = trim_to_speech(retime_spans(spans, head_mask, settings, head), mask, settings)
    else:
        spans = placed_spans(spans, retimed, mask, speech_ms, settings)

    # Times that say nothing (fixed steps, spans over silence) cannot say where speech is
    # missing, but the text is usually whole (measured: decoding such an item again in
    # pieces cost more words than it found, scripts/fidelity.py): re-time it, and
    # re-decode only if the text is also degenerate. Whole-second times, snapped to the
    # pauses, do say it: a sentence the decode skipped or stopped before is a stretch.
    trusted = retimed in (None, RETIME_WHOLE)
    degenerate = degenerate_reason(result, speech_total_ms, settings)
    stretches: list[Stretch] = []
    if degenerate is None and trusted and (spans or not result.text.strip()):
        # Only trustworthy times say where speech is missing; results without spans
        # (backends without timestamps) carry their text for the whole item.
        stretches = uncovered_stretches(mask, spans, duration_ms, settings)
        whole = [
            s
            for s in stretches
            if s.end_ms - s.start_ms >= settings.whole_item_fraction * duration_ms
        ]
        if whole:  # the same audio again would decode the same: split it instead
            degenerate, stretches = EMPTY, []
    if degenerate is None:
        if tail is not None:
            stretches = [tail]
        return ItemCheck(spans=spans, stretches=tuple(stretches), retimed=retimed)
    pieces = split_points(samples, mask, speech_ms, settings)
    if len(pieces) < 2:
        return ItemCheck(spans=spans, retimed=retimed, degenerate=degenerate)
    return ItemCheck(
        spans=spans,
        stretches=tuple(Stretch(a, b, degenerate) for a, b in pieces),
        replace=True,
        retimed=retimed,
        degenerate=degenerate,
    )
