"""Speakers of one request: channel split labels and diarization over a speaker stage.

What :class:`serve_app.online.service.TranscriptionService` does with a :class:`SpeakerRequest`:

- ``channels="split"``: every channel is its own signal (VAD'd and recognized on its own,
  its segments ordinary recognizer items); :func:`merge_channels` labels each channel's
  segments with the channel's name and merges them by start time.
- ``diarize=True`` (one signal): :func:`serve_app.core.pipeline.diarize_signal` cuts windows in the
  VAD segments, sends each window as one call to the speaker stage (so windows of many
  requests share its batches), clusters this request's embeddings alone and returns the
  speaker turns; :func:`label_segments` gives every transcript segment its speaker,
  splitting one that spans a change (word timestamps where present, else the windows).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from serve_app.core.diarization import (
    Diarization,
    DiarizationOptions,
    SpeakerSegment,
    SpeakerTurn,
)
from serve_app.core.text import join_texts
from serve_app.core.transcript import TranscriptSegment
from serve_app.core.types import EmbeddingJob, WordTiming

EmbedFn = Callable[[EmbeddingJob], Awaitable[np.ndarray]]
ChannelMode = Literal["mix", "split"]
# ``channels``: one mixed signal, or each channel recognized on its own and labelled.
CHANNEL_MODES: tuple[str, ...] = get_args(ChannelMode)


@dataclass(frozen=True)
class SpeakerRequest:
    """What one request asked about speakers (the server's defaults already applied)."""

    channels: ChannelMode = "mix"
    diarize: bool = False
    diarization: DiarizationOptions = field(default_factory=DiarizationOptions)


def label_segments(
    segments: Sequence[TranscriptSegment], diarization: Diarization
) -> tuple[TranscriptSegment, ...]:
    """Every segment with its speaker; one spanning a change is split at it."""
    pieces = assign_speakers(
        [(s.start_s, s.end_s, s.text, s.words) for s in segments], diarization.turns
    )
    return tuple(
        TranscriptSegment(i, p.start_s, p.end_s, p.text, p.words, p.speaker)
        for i, p in enumerate(pieces)
    )


def merge_channels(
    per_channel: Sequence[tuple[str, Sequence[TranscriptSegment]]],
) -> tuple[TranscriptSegment, ...]:
    """Each channel's segments labelled with its name, merged by start time, renumbered."""
    labelled = [replace(seg, speaker=name) for name, segs in per_channel for seg in segs]
    labelled.sort(key=lambda seg: (seg.start_s, seg.end_s))
    return tuple(replace(seg, id=i) for i, seg in enumerate(labelled))


def talk_time_s(segments: Sequence[TranscriptSegment], order: Sequence[str]) -> dict[str, float]:
    """Seconds of segments per speaker, in ``order`` (speakers without segments: 0)."""
    totals = dict.fromkeys(order, 0.0)
    for seg in segments:
        if seg.speaker is not None:
            totals[seg.speaker] = totals.get(seg.speaker, 0.0) + seg.end_s - seg.start_s
    return {k: round(v, 3) for k, v in totals.items()}


# -- speakers onto transcript segments ---------------------------------------------------


def speaker_at(start_s: float, end_s: float, turns: Sequence[SpeakerTurn]) -> str | None:
    """The speaker with most overlap with ``[start_s, end_s]``; without any overlap, the
    speaker of the nearest turn; ``None`` without turns."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for turn in turns:
        shared_s = min(end_s, turn.end_s) - max(start_s, turn.start_s)
        if shared_s > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared_s
    if overlap:
        return max(overlap.items(), key=lambda kv: kv[1])[0]

    def distance_s(turn: SpeakerTurn) -> float:
        return max(turn.start_s - end_s, start_s - turn.end_s, 0.0)

    return min(turns, key=distance_s).speaker


def _split_by_words(
    start_s: float, end_s: float, words: Sequence[WordTiming], turns: Sequence[SpeakerTurn]
) -> list[SpeakerSegment]:
    runs: list[tuple[str | None, list[WordTiming]]] = []
    for word in words:
        speaker = speaker_at(word.start_s, max(word.end_s, word.start_s + 1e-3), turns)
        if runs and runs[-1][0] == speaker:
            runs[-1][1].append(word)
        else:
            runs.append((speaker, [word]))
    out = []
    for index, (speaker, run) in enumerate(runs):
        piece_start = start_s if index == 0 else run[0].start_s
        piece_end = end_s if index == len(runs) - 1 else runs[index + 1][1][0].start_s
        text = join_texts([w.word for w in run])
        out.append(SpeakerSegment(piece_start, piece_end, text, tuple(run), speaker))
    return out


def _split_text(text: str, fractions: Sequence[float]) -> list[str]:
    """Cut ``text`` into len(fractions) parts of about those shares of its tokens (words,
    or characters for text without spaces, such as Chinese)."""
    tokens = text.split() if " " in text.strip() else list(text.strip())
    joiner = " " if " " in text.strip() else ""
    bounds = np.round(np.cumsum([0.0, *fractions]) * len(tokens)).astype(int)
    bounds[-1] = len(tokens)
    return [joiner.join(tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _split_by_turns(
    start_s: float, end_s: float, text: str, turns: Sequence[SpeakerTurn], min_piece_s: float
) -> list[SpeakerSegment]:
    cuts: list[tuple[float, float, str]] = []
    for turn in turns:
        a, b = max(start_s, turn.start_s), min(end_s, turn.end_s)
        if b - a <= 0:
            continue
        if cuts and cuts[-1][2] == turn.speaker:
            cuts[-1] = (cuts[-1][0], b, turn.speaker)
        else:
            cuts.append((a, b, turn.speaker))
    cuts = [c for c in cuts if c[1] - c[0] >= min_piece_s]
    if len(cuts) <= 1:
        speaker = speaker_at(start_s, end_s, turns)
        return [SpeakerSegment(start_s, end_s, text, (), speaker)]
    # Stretch the pieces over the segment (gaps between turns go to the earlier piece).
    edges = [start_s, *(c[0] for c in cuts[1:]), end_s]
    durations = [b - a for a, b in zip(edges[:-1], edges[1:])]
    texts = _split_text(text, [d / sum(durations) for d in durations])
    return [
        SpeakerSegment(a, b, piece_text, (), speaker)
        for (a, b, piece_text, speaker) in zip(edges[:-1], edges[1:], texts, [c[2] for c in cuts])
        if piece_text or len(cuts) == 1
    ]


def assign_speakers(
    segments: Sequence[tuple[float, float, str, Sequence[WordTiming]]],
    turns: Sequence[SpeakerTurn],
    *,
    min_piece_s: float = 0.5,
) -> list[SpeakerSegment]:
    """Segments ``(start_s, end_s, text, words)`` -> segments with ``speaker``.

    A segment inside one speaker's turn keeps its text and times. One that spans a change
    is split: at the first word of each new speaker when it has word timings, else at the
    turn boundaries (pieces under ``min_piece_s`` are not split off) with its text divided
    in proportion to each piece's duration.
    """
    out: list[SpeakerSegment] = []
    for start_s, end_s, text, words in segments:
        if not turns:
            out.append(SpeakerSegment(start_s, end_s, text, tuple(words), None))
        elif words:
            out.extend(_split_by_words(start_s, end_s, words, turns))
        else:
            out.extend(_split_by_turns(start_s, end_s, text, turns, min_piece_s))
    return out
