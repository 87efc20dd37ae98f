"""TranscriptionService with fake stages: stitching, ordering, isolation (no Ray)."""

import asyncio

import numpy as np
import pytest

from serve_app.config import AudioSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.errors import RecognitionError, UnknownModelError
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import RecognitionOptions, SegmentTranscript, WordTiming
from serve_app.online.service import ModelRoute, TranscriptionService


def _audio(seconds: float, marker: float) -> DecodedAudio:
    # Each request's samples carry its own marker value so cross-talk would show.
    return DecodedAudio(np.full(int(seconds * 16000), marker, np.float32), 16000, "wav")


async def _segments(samples):
    return [SpeechSegment(2000, 3000), SpeechSegment(0, 1000), SpeechSegment(5000, 5500)][:2] + [
        SpeechSegment(5000, 5500)
    ]


async def _recognize(job):
    # Later segments finish first: stitching must not depend on completion order.
    await asyncio.sleep(0.01 * (3 - job.duration_s))
    if job.options.prompt == "fail" and job.duration_s < 0.6:
        raise RecognitionError("boom")
    marker = float(job.audio[0])
    return SegmentTranscript(
        text=f"m{marker:g}-{job.duration_s:g}s",
        words=(WordTiming(0.1, 0.2, "w"),),
    )


def _service():
    return TranscriptionService(
        segment=_segments,
        routes={"a": ModelRoute("a", _recognize), "alias": ModelRoute("a", _recognize)},
        default_model="a",
        limits=AudioSettings(),
    )


def test_segments_stitched_in_time_order_with_offsets():
    tr = asyncio.run(_service().transcribe(_audio(6, 7), model=None))
    assert [s.start_s for s in tr.segments] == [0.0, 2.0, 5.0]  # VAD order is not trusted
    assert tr.text == "m7-1s m7-1s m7-0.5s"
    assert tr.segments[1].words[0].start_s == pytest.approx(2.1)  # segment offset added
    assert tr.model == "a"


def test_concurrent_requests_keep_their_own_audio():
    async def run_all():
        svc = _service()
        return await asyncio.gather(
            *(svc.transcribe(_audio(6, m), model="alias") for m in range(1, 17))
        )

    results = asyncio.run(run_all())
    for marker, tr in enumerate(results, start=1):
        assert all(seg.text.startswith(f"m{marker}-") for seg in tr.segments)


def test_failing_segment_fails_only_its_request():
    async def run_both():
        svc = _service()
        return await asyncio.gather(
            svc.transcribe(_audio(6, 1), model="a", options=RecognitionOptions(prompt="fail")),
            svc.transcribe(_audio(6, 2), model="a"),
            return_exceptions=True,
        )

    bad, good = asyncio.run(run_both())
    assert isinstance(bad, RecognitionError)
    assert good.text.startswith("m2-")


def test_unknown_model():
    with pytest.raises(UnknownModelError):
        _service().route("nope")


def test_route_packs_consecutive_segments_before_recognition():
    seen: list[float] = []

    async def recognize(job):
        seen.append(job.duration_s)
        return SegmentTranscript(text=f"{job.duration_s:g}s")

    service = TranscriptionService(
        segment=_segments,  # 0-1 s, 2-3 s, 5-5.5 s
        routes={"w": ModelRoute("w", recognize, pack_segments_ms=4000)},
        default_model="w",
        limits=AudioSettings(),
    )
    tr = asyncio.run(service.transcribe(_audio(6, 1), model=None))
    # 0-3 s fits in 4 s (the pause is kept in the piece); adding 5.5 s would not.
    assert sorted(seen) == [0.5, 3.0]
    assert [(s.start_s, s.end_s) for s in tr.segments] == [(0.0, 3.0), (5.0, 5.5)]
    assert tr.text == "3s 0.5s"
