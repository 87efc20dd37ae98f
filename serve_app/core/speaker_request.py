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
from typing import Literal

import numpy as np

from serve_app.core.diarization import (
    Diarization,
    DiarizationOptions,
    assign_speakers,
)
from serve_app.core.transcript import TranscriptSegment
from serve_app.core.types import EmbeddingJob

EmbedFn = Callable[[EmbeddingJob], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class SpeakerRequest:
    """What one request asked about speakers (the server's defaults already applied)."""

    channels: Literal["mix", "split"] = "mix"
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
