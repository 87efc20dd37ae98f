"""Language detection once per request (serve_app.core.language) through TranscriptionService,
with a fake multilingual recognizer (no Ray, no model).

Each segment's samples carry a marker naming the language the fake "hears" in it and
how sure it is; the fake records the language every item was decoded with.
"""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.config import AudioSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.language import majority_language
from serve_app.core.pipeline import BlockExecutor, Route, SpeechItem, recognize_signal, run_lockstep
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import RecognitionOptions, SegmentTranscript
from serve_app.online.service import ModelRoute, TranscriptionService

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
        segment=segments, routes={"m": route}, default_model="m", limits=AudioSettings()
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


def test_offline_block_detection_decides_as_online() -> None:
    """The offline driver (run_lockstep + BlockExecutor over recognize_signal): the same
    languages and kept probes as the online path; every file's probe items ride in the
    block's batches beside other files' first passes, one call per round."""
    calls: list[list[tuple[float, str | None]]] = []

    def transcribe_batch(jobs):
        calls.append([(float(j.audio[0]), j.options.language) for j in jobs])
        out = []
        for job in jobs:
            heard, probability = HEARD[float(job.audio[0])]
            out.append(
                SegmentTranscript(
                    f"{job.audio[0]:.0f}", language=heard, language_probability=probability
                )
            )
        return out

    def items(markers: list[float]) -> list[SpeechItem]:
        return [
            SpeechItem(i * 1000, i * 1000 + 10, np.full(160, m, np.float32))
            for i, m in enumerate(markers)
        ]

    route = Route("m", detects_language=True)
    files = [
        (RecognitionOptions(), items([1.0, 2.0])),  # confident fr
        (RecognitionOptions(), items([2.0, 3.0, 4.0, 1.0])),  # unsure -> de
        (RecognitionOptions(language="es"), items([2.0])),  # given
    ]
    steps = [recognize_signal(mine, route, opts) for opts, mine in files]
    out = run_lockstep(steps, BlockExecutor(transcribe_batch))
    assert [o.text for o in out] == ["1 2", "2 3 4 1", "2"]
    assert calls[0] == [(1.0, None), (2.0, None), (2.0, "es")]  # probes beside a first pass
    assert calls[1] == [(2.0, "fr"), (3.0, None), (4.0, None)]  # fr's rest, de's probes
    assert calls[2] == [(2.0, "de"), (1.0, "de")]  # the probes heard as de are kept
    assert len(calls) == 3
