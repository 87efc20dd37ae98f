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

from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript

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
        if _unsure(probed[0]) and len(audios) > 1:
            more = await asyncio.gather(*(recognize(job(a)) for a in audios[1:PROBE_ITEMS]))
            probed.update(enumerate(more, start=1))
    except Exception as exc:  # the normal pass decodes (and fails) these items again
        logger.debug("language probe failed: %r", exc)
        return options, {}
    return _decide(options, probed)


def _unsure(result: SegmentTranscript) -> bool:
    probability = result.language_probability
    return probability is not None and probability < CONFIDENT_PROBABILITY


def _decide(
    options: RecognitionOptions, probed: dict[int, SegmentTranscript]
) -> tuple[RecognitionOptions, dict[int, SegmentTranscript]]:
    language = majority_language([probed[i] for i in sorted(probed)])
    if language is None:
        return options, {}
    keep = {i: r for i, r in probed.items() if r.language == language}
    return dataclasses.replace(options, language=language), keep


BatchFn = Callable[[Sequence[SegmentJob]], Sequence[object]]


def detect_languages_batched(
    transcribe_batch: BatchFn,
    requests: Sequence[tuple[RecognitionOptions, Sequence[np.ndarray]]],
) -> list[tuple[RecognitionOptions, dict[int, SegmentTranscript]]]:
    """The same decision as :func:`detect_request_language` for many files at once (the
    offline job): the first items of every file needing detection in ONE batch, then the
    next few items of the unsure ones in one more. A file whose probe item failed keeps
    its options (its normal pass reports the failure)."""
    out: list[tuple[RecognitionOptions, dict[int, SegmentTranscript]]] = [
        (options, {}) for options, _ in requests
    ]
    todo = [
        i for i, (options, audios) in enumerate(requests) if options.language is None and audios
    ]
    if not todo:
        return out
    first = transcribe_batch([SegmentJob(requests[i][1][0], requests[i][0]) for i in todo])
    probed: dict[int, dict[int, SegmentTranscript]] = {}
    for i, result in zip(todo, first, strict=True):
        if isinstance(result, SegmentTranscript):
            probed[i] = {0: result}
    unsure = [i for i in probed if _unsure(probed[i][0]) and len(requests[i][1]) > 1]
    more_jobs = [
        (i, k, SegmentJob(requests[i][1][k], requests[i][0]))
        for i in unsure
        for k in range(1, min(PROBE_ITEMS, len(requests[i][1])))
    ]
    if more_jobs:
        more = transcribe_batch([job for _, _, job in more_jobs])
        for (i, k, _), result in zip(more_jobs, more, strict=True):
            if not isinstance(result, SegmentTranscript):
                probed.pop(i, None)
            elif i in probed:
                probed[i][k] = result
    for i, results in probed.items():
        out[i] = _decide(requests[i][0], results)
    return out
