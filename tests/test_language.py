"""Language detection once per request (serve_app.core.language) through TranscriptionService,
with a fake multilingual recognizer (no Ray, no model).

Each segment's samples carry a marker naming the language the fake "hears" in it and
how sure it is; the fake records the language every item was decoded with.
"""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.core.audio import AudioLimits, DecodedAudio
from serve_app.core.language import majority_language
from serve_app.core.pipeline import ModelRoute, TranscriptionService
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import RecognitionOptions, SegmentTranscript

# marker -> (language heard, probability)
HEARD = {1.0: ("fr", 0.95), 2.0: ("nl", 0.40), 3.0: ("de", 0.60), 4.0: ("de", 0.55)}


def _audio(markers: list[float]) -> DecodedAudio:
    # One second per segment, 1 s of silence between them, each filled with its marker.
    samples = np.zeros(len(markers) * 32000, np.float32)
    for i, marker in enumerate(markers):
        samples[i * 32000 : i * 32000 + 16000] = marker
    return DecodedAudio(samples, 16000, "wav")


def _service(markers: list[float], *, detects: bool = True):
    decoded: list[tuple[float, str | None]] = []

    async def segments(samples):
        return [SpeechSegment(i * 2000, i * 2000 + 1000) for i in range(len(markers))]

    async def recognize(job):
        marker = float(job.audio[0])
        decoded.append((marker, job.options.language))
        heard, probability = HEARD[marker]
        if job.options.language is not None:
            return SegmentTranscript(
                text=f"{marker:g}:{job.options.language}", language=job.options.language
            )
        return SegmentTranscript(
            text=f"{marker:g}:{heard}", language=heard, language_probability=probability
        )

    async def detects_language() -> bool:
        return detects

    route = ModelRoute("m", recognize, detects_language=detects_language)
    service = TranscriptionService(
        segment=segments, routes={"m": route}, default_model="m", limits=AudioLimits()
    )
    return service, decoded


def _run(service, markers, options=None):
    return asyncio.run(service.transcribe(_audio(markers), model="m", options=options))


def test_confident_first_item_sets_the_language_of_every_other_item() -> None:
    markers = [1.0, 2.0, 3.0, 2.0]
    service, decoded = _service(markers)
    tr = _run(service, markers)
    assert tr.language == "fr"
    # Only the first item was decoded with detection; it is kept, not decoded again.
    assert decoded[0] == (1.0, None)
    assert sorted(decoded[1:]) == [(2.0, "fr"), (2.0, "fr"), (3.0, "fr")]
    assert [s.text for s in tr.segments] == ["1:fr", "2:fr", "3:fr", "2:fr"]


def test_unsure_first_item_takes_the_majority_of_the_first_few() -> None:
    # nl 0.40 alone is unsure; over the first three: de 0.60 + 0.55 beats nl 0.40.
    markers = [2.0, 3.0, 4.0, 1.0]
    service, decoded = _service(markers)
    tr = _run(service, markers)
    assert tr.language == "de"
    assert set(decoded[:3]) == {(2.0, None), (3.0, None), (4.0, None)}
    # The probe item heard as nl is decoded again in German; the de ones are kept.
    assert sorted(decoded[3:]) == [(1.0, "de"), (2.0, "de")]
    assert [s.text for s in tr.segments] == ["2:de", "3:de", "4:de", "1:de"]


def test_given_language_skips_detection() -> None:
    markers = [2.0, 3.0]
    service, decoded = _service(markers)
    tr = _run(service, markers, RecognitionOptions(language="es"))
    assert tr.language == "es"
    assert sorted(decoded) == [(2.0, "es"), (3.0, "es")]


def test_model_without_detection_decodes_every_item_as_before() -> None:
    markers = [1.0, 2.0]
    service, decoded = _service(markers, detects=False)
    tr = _run(service, markers)
    assert sorted(decoded) == [(1.0, None), (2.0, None)]
    assert [s.text for s in tr.segments] == ["1:fr", "2:nl"]


def test_majority_weights_by_probability_and_counts_unscored_as_one() -> None:
    results = [
        SegmentTranscript("", language="nl", language_probability=0.9),
        SegmentTranscript("", language="de", language_probability=0.5),
        SegmentTranscript("", language="de", language_probability=0.5),
    ]
    assert majority_language(results) == "de"
    assert majority_language([SegmentTranscript("", language="ko")]) == "ko"
    assert majority_language([SegmentTranscript("")]) is None


def test_offline_batched_detection_decides_as_online() -> None:
    """detect_languages_batched (the offline job): the same languages and kept probes as
    the online path, the first items of every file in ONE batch."""
    from serve_app.core.language import detect_languages_batched

    calls: list[list[tuple[float, str | None]]] = []

    def transcribe_batch(jobs):
        calls.append([(float(j.audio[0]), j.options.language) for j in jobs])
        out = []
        for job in jobs:
            heard, probability = HEARD[float(job.audio[0])]
            out.append(SegmentTranscript("", language=heard, language_probability=probability))
        return out

    def item(marker: float) -> np.ndarray:
        return np.full(160, marker, np.float32)

    files = [
        (RecognitionOptions(), [item(1.0), item(2.0)]),  # confident fr
        (RecognitionOptions(), [item(2.0), item(3.0), item(4.0), item(1.0)]),  # unsure -> de
        (RecognitionOptions(language="es"), [item(2.0)]),  # given
    ]
    decided = detect_languages_batched(transcribe_batch, files)
    assert [options.language for options, _ in decided] == ["fr", "de", "es"]
    assert sorted(decided[0][1]) == [0] and sorted(decided[1][1]) == [1, 2]
    assert calls[0] == [(1.0, None), (2.0, None)]  # first items of both files, one batch
    assert calls[1] == [(3.0, None), (4.0, None)]  # the unsure file's next two
    assert len(calls) == 2
