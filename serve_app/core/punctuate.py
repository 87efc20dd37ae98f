"""The request side of the punctuation stage: a stitched transcript's segment texts go to
the stage as one request, the punctuated texts come back onto the same segments (times,
words and speakers unchanged) and the full text is joined again."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from serve_app.core.transcript import TranscriptSegment, join_texts
from serve_app.core.types import PunctuationRequest

PunctuateFn = Callable[[PunctuationRequest], Awaitable[Sequence[str]]]


def apply_texts(
    segments: Sequence[TranscriptSegment], texts: Sequence[str]
) -> tuple[str, tuple[TranscriptSegment, ...]]:
    """``segments`` with new texts (same count) and the joined full text."""
    if len(texts) != len(segments):
        raise ValueError(f"{len(texts)} punctuated texts for {len(segments)} segments")
    pieces = tuple(dataclasses.replace(seg, text=text) for seg, text in zip(segments, texts))
    return join_texts([p.text for p in pieces]), pieces
