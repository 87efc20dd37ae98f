"""Turn raw VAD speech spans into batchable segments (pure functions, no models).

Order of operations: pad each span, merge close neighbours while the result stays within
``max_segment_s``, split what is still too long at the longest real pause near each cut
(runs of low frame energy relative to the span's own speech level; the quietest 50 ms
window when there is none), then drop clicks shorter than ``min_segment_ms``. Times are
integer milliseconds in the original audio's timeline throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.core.audio import SAMPLE_RATE_HZ

_SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
# Energy is measured over windows of this length when looking for a quiet cut point.
_CUT_WINDOW_MS = 50
# Frame of the pause search inside long spans.
_PAUSE_FRAME_MS = 10
# A cut at a pause never leaves a piece shorter than this (a sliver batches badly).
_MIN_PIECE_MS = 1000


@dataclass(frozen=True)
class SpeechSegment:
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    def slice(self, samples: np.ndarray) -> np.ndarray:
        return samples[self.start_ms * _SAMPLES_PER_MS : self.end_ms * _SAMPLES_PER_MS]


def pad_spans(
    spans_ms: Sequence[tuple[int, int]], *, pad_ms: int, total_ms: int
) -> list[SpeechSegment]:
    out = []
    for start_ms, end_ms in spans_ms:
        start = max(0, int(start_ms) - pad_ms)
        end = min(total_ms, int(end_ms) + pad_ms)
        if end > start:
            out.append(SpeechSegment(start, end))
    return out


def merge_close(
    segments: Sequence[SpeechSegment], *, merge_gap_ms: int, max_segment_ms: int
) -> list[SpeechSegment]:
    """Merge neighbours separated by at most ``merge_gap_ms`` (overlaps always merge)."""
    merged: list[SpeechSegment] = []
    for seg in sorted(segments, key=lambda s: s.start_ms):
        if merged:
            last = merged[-1]
            gap_ms = seg.start_ms - last.end_ms
            joined = SpeechSegment(last.start_ms, max(last.end_ms, seg.end_ms))
            if gap_ms <= 0 or (gap_ms <= merge_gap_ms and joined.duration_ms <= max_segment_ms):
                merged[-1] = joined
                continue
        merged.append(seg)
    return merged


@dataclass(frozen=True)
class PackedPiece:
    """A packed piece and the VAD segments it is made of (all in the audio's time)."""

    segment: SpeechSegment
    members: tuple[SpeechSegment, ...]

    def members_relative_ms(self) -> tuple[tuple[int, int], ...]:
        """The members as ``(start_ms, end_ms)`` relative to the piece's start."""
        start = self.segment.start_ms
        return tuple((m.start_ms - start, m.end_ms - start) for m in self.members)


# A piece with at least this much room left is filled by cutting the next segment at a
# pause (``pack_pieces`` with ``samples``); less room is not worth a cut.
_MIN_FILL_MS = 3000


def pack_pieces(
    segments: Sequence[SpeechSegment],
    *,
    max_piece_ms: int,
    samples: np.ndarray | None = None,
    pauses: PauseSettings | None = None,
) -> list[PackedPiece]:
    """:func:`pack_segments`, keeping which VAD segments make up each piece.

    The members tell a later check (``serve_app.core.coverage``) where the speech of a piece is,
    so that it can find speech the decode did not account for.

    With ``samples``, a segment that does not fit the current piece is cut at a real pause
    (:func:`find_pauses_ms`) so that its first part fills the piece's room (at least
    ``_MIN_FILL_MS`` of it, and no part shorter than ``_MIN_PIECE_MS``); without a pause
    there it starts a new piece as before. Whole VAD segments of up to 30 s pack into 30 s
    windows badly (a 20 s and a 15 s segment make two windows 60 % full); cut at pauses,
    the windows come out nearly full, and every window less is one encoder pass less.
    """
    ordered = sorted(segments, key=lambda s: s.start_ms)
    if max_piece_ms <= 0:
        return [PackedPiece(seg, (seg,)) for seg in ordered]
    pauses = pauses or PauseSettings()
    packed: list[PackedPiece] = []
    queue = list(reversed(ordered))
    while queue:
        seg = queue.pop()
        # Unlike merge_close, touching pieces (the cuts of split_long) stay apart when
        # joining them would exceed the limit: that limit is the model's window.
        last = packed[-1].segment if packed else None
        if last is not None and max(last.end_ms, seg.end_ms) - last.start_ms <= max_piece_ms:
            packed[-1] = PackedPiece(
                SpeechSegment(last.start_ms, max(last.end_ms, seg.end_ms)),
                (*packed[-1].members, seg),
            )
            continue
        if last is not None and samples is not None:
            cut = _fill_cut_ms(samples, seg, last.start_ms + max_piece_ms, pauses)
            if cut is not None:
                queue += [SpeechSegment(cut, seg.end_ms), SpeechSegment(seg.start_ms, cut)]
                continue
        packed.append(PackedPiece(seg, (seg,)))
    return packed


def _fill_cut_ms(
    samples: np.ndarray, seg: SpeechSegment, room_end_ms: int, pauses: PauseSettings
) -> int | None:
    """Where to cut ``seg`` so that its first part ends by ``room_end_ms``: the middle of
    the longest pause in that stretch, or None (too little room, or no pause)."""
    hi = min(room_end_ms, seg.end_ms - _MIN_PIECE_MS)
    lo = max(seg.start_ms + _MIN_PIECE_MS, seg.start_ms)
    if room_end_ms - seg.start_ms < _MIN_FILL_MS or hi <= lo:
        return None
    found = find_pauses_ms(samples, seg.start_ms, seg.end_ms, pauses)
    cut = _pause_cut_ms(found, lo, hi)
    return None if cut is None or not lo <= cut <= hi else cut


def pack_segments(
    segments: Sequence[SpeechSegment],
    *,
    max_piece_ms: int,
    samples: np.ndarray | None = None,
    pauses: PauseSettings | None = None,
) -> list[SpeechSegment]:
    """Join consecutive segments (the gaps between them included) into pieces no longer than
    ``max_piece_ms``; a segment already longer stays as it is. ``max_piece_ms <= 0``: no-op.
    With ``samples``, segments are cut at pauses to fill pieces (:func:`pack_pieces`).

    For models whose cost does not follow segment length (Whisper's encoder always runs a
    full 30 s window), this turns several short items into one full one.
    """
    pieces = pack_pieces(segments, max_piece_ms=max_piece_ms, samples=samples, pauses=pauses)
    return [piece.segment for piece in pieces]


def _quietest_cut_ms(samples: np.ndarray, lo_ms: int, hi_ms: int) -> int:
    """The start of the lowest-energy window in [lo_ms, hi_ms), or hi_ms if none fits."""
    window = _CUT_WINDOW_MS * _SAMPLES_PER_MS
    region = samples[lo_ms * _SAMPLES_PER_MS : hi_ms * _SAMPLES_PER_MS]
    count = len(region) // window
    if count < 2:
        return hi_ms
    energy = np.square(region[: count * window].astype(np.float64)).reshape(count, window).sum(1)
    return lo_ms + int(np.argmin(energy)) * _CUT_WINDOW_MS + _CUT_WINDOW_MS // 2


@dataclass(frozen=True)
class PauseSettings:
    """What counts as a pause inside a span: a run of frames at least ``min_pause_ms`` long
    whose energy is ``depth_db`` or more below the span's speech level (the 75th percentile
    of its 10 ms frame energies: a VAD span is mostly speech). ``min_pause_ms <= 0`` turns
    pause search off (cuts fall back to the quietest 50 ms window)."""

    min_pause_ms: int = 200
    depth_db: float = 20.0


def frame_energy_db(samples: np.ndarray, start_ms: int, end_ms: int) -> np.ndarray:
    """Energy of each whole 10 ms frame of [start_ms, end_ms), in dB (floor -120 dB)."""
    frame = _PAUSE_FRAME_MS * _SAMPLES_PER_MS
    region = samples[start_ms * _SAMPLES_PER_MS : end_ms * _SAMPLES_PER_MS]
    count = len(region) // frame
    power = np.square(region[: count * frame].astype(np.float64)).reshape(count, frame).mean(1)
    return 10.0 * np.log10(power + 1e-12)


def find_pauses_ms(
    samples: np.ndarray, start_ms: int, end_ms: int, pauses: PauseSettings
) -> list[tuple[int, int]]:
    """Pauses inside [start_ms, end_ms) as (start_ms, end_ms) runs of quiet 10 ms frames."""
    if pauses.min_pause_ms <= 0:
        return []
    energy_db = frame_energy_db(samples, start_ms, end_ms)
    min_frames = max(1, pauses.min_pause_ms // _PAUSE_FRAME_MS)
    if len(energy_db) < min_frames:
        return []
    # Relative to the span's own level, so a quiet speaker or a gain change does not matter.
    quiet = energy_db < np.percentile(energy_db, 75) - pauses.depth_db
    # Run boundaries of the quiet mask: +1 where a run starts, -1 after it ends.
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [
        (start_ms + int(a) * _PAUSE_FRAME_MS, start_ms + int(b) * _PAUSE_FRAME_MS)
        for a, b in zip(starts, stops)
        if b - a >= min_frames
    ]


def _pause_cut_ms(pauses_ms: Sequence[tuple[int, int]], lo_ms: int, hi_ms: int) -> int | None:
    """The middle of the longest pause (clipped to [lo_ms, hi_ms]), the later one on a tie
    (fuller pieces); None when no pause reaches into the window."""
    best: tuple[int, int] | None = None
    for p_start, p_end in pauses_ms:
        a, b = max(p_start, lo_ms), min(p_end, hi_ms)
        if b - a <= 0:
            continue
        key = (b - a, (a + b) // 2)
        if best is None or key >= best:
            best = key
    return None if best is None else best[1]


def split_long(
    segments: Sequence[SpeechSegment],
    samples: np.ndarray,
    *,
    max_segment_ms: int,
    pauses: PauseSettings | None = None,
) -> list[SpeechSegment]:
    """Cut segments longer than ``max_segment_ms`` at real pauses, each piece within limit.

    A cut goes into the longest pause (see :class:`PauseSettings`) in the second half of
    the allowed span, so pieces stay at least half the maximum long (fewer, fuller batch
    items); failing that, into the longest pause anywhere in the allowed span (a pause a
    listener hears beats a full piece: a cut inside a word costs words); failing that, at
    the quietest 50 ms window of the second half. No piece exceeds the maximum.
    """
    pauses = pauses or PauseSettings()
    out: list[SpeechSegment] = []
    for seg in segments:
        start = seg.start_ms
        found = (
            find_pauses_ms(samples, seg.start_ms, seg.end_ms, pauses)
            if seg.duration_ms > max_segment_ms
            else []
        )
        while seg.end_ms - start > max_segment_ms:
            limit = start + max_segment_ms
            # Keep away from the piece's own start so a pause at it cannot make a sliver.
            cut = _pause_cut_ms(found, start + max_segment_ms // 2, limit)
            if cut is None:
                cut = _pause_cut_ms(found, start + _MIN_PIECE_MS, limit)
            if cut is None:
                cut = _quietest_cut_ms(samples, start + max_segment_ms // 2, limit)
            cut = min(max(cut, start + 1), limit)
            out.append(SpeechSegment(start, cut))
            start = cut
        out.append(SpeechSegment(start, seg.end_ms))
    return out


def postprocess_spans(
    spans_ms: Sequence[tuple[int, int]],
    samples: np.ndarray,
    *,
    max_segment_s: float,
    merge_gap_ms: int,
    min_segment_ms: int,
    pad_ms: int,
    pauses: PauseSettings | None = None,
) -> list[SpeechSegment]:
    """Raw VAD spans -> ordered, non-overlapping segments no longer than ``max_segment_s``.

    Spans still too long after merging are cut at pauses inside them (``pauses``)."""
    total_ms = len(samples) // _SAMPLES_PER_MS
    max_segment_ms = int(max_segment_s * 1000)
    segments = pad_spans(spans_ms, pad_ms=pad_ms, total_ms=total_ms)
    segments = merge_close(segments, merge_gap_ms=merge_gap_ms, max_segment_ms=max_segment_ms)
    segments = split_long(segments, samples, max_segment_ms=max_segment_ms, pauses=pauses)
    return [s for s in segments if s.duration_ms >= min_segment_ms]
