"""Language detection once per request, not per segment.

When the client names no language and the model detects one itself (multilingual Whisper,
SenseVoice), every item decoded on its own would pick its own language: a short or noisy
segment of a German call can come back as Dutch or Yiddish. So the request's first item
is decoded alone first (with detection); when the model is sure of it (or reports no
score) its language holds for the request, otherwise the next few items are decoded with
detection too and the language with the most probability summed over them wins. Every
other item is then decoded with that language; a probe item detected in another language
is decoded again with it. The probe items' results are kept, so a confident request pays
only the latency of its first item, never extra compute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from serve_app.recognizers.base import RecognitionOptions, SegmentJob, SegmentTranscript

logger = logging.getLogger(__name__)

# Items decoded with detection when the first one is not sure.
PROBE_ITEMS = 3
# Below this probability of its top language an item's detection is "not sure".
CONFIDENT_PROBABILITY = 0.7

RecognizeFn = Callable[[SegmentJob], Awaitable[SegmentTranscript]]
DetectsFn = Callable[[], Awaitable[bool]]


def majority_language(results: Sequence[SegmentTranscript]) -> str | None:
    """The language with the most probability summed over ``results`` (a result without
    a score counts 1); ties go to the earliest item's language."""
    weight: dict[str, float] = defaultdict(float)
    for result in results:
        if result.language:
            weight[result.language] += (
                1.0 if result.language_probability is None else result.language_probability
            )
    if not weight:
        return None
    best = max(weight.values())
    return next(r.language for r in results if r.language and weight[r.language] == best)


async def detect_request_language(
    recognize: RecognizeFn,
    detects: DetectsFn | None,
    options: RecognitionOptions,
    audios: Sequence[np.ndarray],
    *,
    deadline_unix_s: float | None = None,
    request_id: str | None = None,
) -> tuple[RecognitionOptions, dict[int, SegmentTranscript]]:
    """``options`` with the request's language set, and the probe items' results to keep
    (by item index). Unchanged options and nothing kept when a language was given, the
    model does not detect one, or a probe item failed (the normal pass then reports it).

    ``audios``: the request's first items in audio order (only the first
    :data:`PROBE_ITEMS` are used).
    """
    if options.language is not None or not audios or detects is None:
        return options, {}
    if not await detects():
        return options, {}

    def job(samples: np.ndarray) -> SegmentJob:
        return SegmentJob(samples, options, deadline_unix_s, request_id)

    try:
        probed = {0: await recognize(job(audios[0]))}
        first = probed[0]
        unsure = first.language_probability is not None and (
            first.language_probability < CONFIDENT_PROBABILITY
        )
        if unsure and len(audios) > 1:
            more = await asyncio.gather(*(recognize(job(a)) for a in audios[1:PROBE_ITEMS]))
            probed.update(enumerate(more, start=1))
    except Exception as exc:  # the normal pass decodes (and fails) these items again
        logger.debug("language probe failed: %r", exc)
        return options, {}
    language = majority_language([probed[i] for i in sorted(probed)])
    if language is None:
        return options, {}
    keep = {i: r for i, r in probed.items() if r.language == language}
    return dataclasses.replace(options, language=language), keep
