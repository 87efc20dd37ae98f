"""The request side of the punctuation stage: a stitched transcript's segment texts go to
the stage as one request, the punctuated texts come back onto the same segments (times,
words and speakers unchanged) and the full text is joined again."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from serve_app.core.transcript import TranscriptSegment, join_texts
from serve_app.core.types import PunctuationRequest

PunctuateFn = Callable[[PunctuationRequest], Awaitable[Sequence[str]]]
Stitched = tuple[str, tuple[TranscriptSegment, ...], str | None]


def apply_texts(
    segments: Sequence[TranscriptSegment], texts: Sequence[str]
) -> tuple[str, tuple[TranscriptSegment, ...]]:
    """``segments`` with new texts (same count) and the joined full text."""
    if len(texts) != len(segments):
        raise ValueError(f"{len(texts)} punctuated texts for {len(segments)} segments")
    pieces = tuple(dataclasses.replace(seg, text=text) for seg, text in zip(segments, texts))
    return join_texts([p.text for p in pieces]), pieces


async def punctuate_stitched(
    punctuate: PunctuateFn | None,
    stitched: Stitched,
    *,
    enabled: bool | None = None,
    deadline_unix_s: float | None = None,
    request_id: str | None = None,
) -> Stitched:
    """``stitched`` (text, segments, language) punctuated by the route's stage; unchanged
    without a stage, with ``enabled=False`` (the request's ``punctuate=false``) or with no
    text."""
    text, segments, language = stitched
    if punctuate is None or enabled is False or not text.strip():
        return stitched
    texts = await punctuate(
        PunctuationRequest(tuple(seg.text for seg in segments), request_id, deadline_unix_s)
    )
    text, segments = apply_texts(segments, list(texts))
    return text, segments, language
