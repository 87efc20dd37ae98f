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

The steps that do this are in :func:`serve_app.core.pipeline.recognize_signal`; this module
holds the decision.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from serve_app.core.types import RecognitionOptions, SegmentTranscript

logger = logging.getLogger(__name__)

# Items decoded with detection when the first one is not sure.
PROBE_ITEMS = 3
# Below this probability of its top language an item's detection is "not sure".
CONFIDENT_PROBABILITY = 0.7

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


def probe_unsure(result: SegmentTranscript) -> bool:
    """Whether a probe item's detection is too unsure to hold for the whole file."""
    probability = result.language_probability
    return probability is not None and probability < CONFIDENT_PROBABILITY


def decide_language(
    options: RecognitionOptions, probed: dict[int, SegmentTranscript]
) -> tuple[RecognitionOptions, dict[int, SegmentTranscript]]:
    language = majority_language([probed[i] for i in sorted(probed)])
    if language is None:
        return options, {}
    keep = {i: r for i, r in probed.items() if r.language == language}
    return dataclasses.replace(options, language=language), keep
