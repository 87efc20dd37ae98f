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


class _FifoModel:
    """A recognizer behind a first-come-first-served queue, one item at a time (what a
    long file's items beyond the replicas' max_ongoing_requests meet in Serve's router)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.served: list[float] = []  # markers in the order they were decoded
        self.most_queued = 0

    async def recognize(self, job):
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((job, done))
        self.most_queued = max(self.most_queued, self.queue.qsize())
        return await done

    async def run(self) -> None:
        while True:
            job, done = await self.queue.get()
            await asyncio.sleep(0.001)
            self.served.append(float(job.audio[0]))
            done.set_result(SegmentTranscript(text=f"m{float(job.audio[0]):g}"))


def _short_behind_long(items_in_flight: int) -> tuple[int, int, str]:
    """A 60-segment file, then a 1-segment one while it runs: how many of the long
    file's items the short one's waited behind, and the long file's text."""

    async def many_segments(samples):
        if len(samples) < 16000 * 2:
            return [SpeechSegment(0, 500)]
        return [SpeechSegment(i * 1000, i * 1000 + 500) for i in range(60)]

    async def main():
        model = _FifoModel()
        worker = asyncio.create_task(model.run())
        route = ModelRoute("a", model.recognize, items_in_flight=items_in_flight)
        svc = TranscriptionService(
            segment=many_segments, routes={"a": route}, default_model="a", limits=AudioSettings()
        )
        long = asyncio.create_task(svc.transcribe(_audio(61, 1), model=None))
        while not model.served:
            await asyncio.sleep(0.001)
        before = len(model.served)
        await svc.transcribe(_audio(1, 2), model=None)
        long_result = await long
        worker.cancel()
        return model.served.index(2.0) - before, model.most_queued, long_result.text

    return asyncio.run(main())


def test_a_long_request_keeps_only_its_window_in_flight_so_a_short_one_is_not_stuck():
    waited, most_queued, text = _short_behind_long(items_in_flight=4)
    assert waited <= 5 and most_queued <= 5, (waited, most_queued)  # 4 of its own + one
    assert text == " ".join(["m1"] * 60)  # every item, in order
    waited_all, _, text_all = _short_behind_long(items_in_flight=0)  # 0: all at once
    assert waited_all >= 55 and text_all == text  # behind (nearly) the whole long file


def test_items_in_flight_are_two_forwards_per_replica_within_max_ongoing_requests():
    from serve_app.config import RecognizerSettings
    from serve_app.online.app import items_in_flight

    def rec(items: int, **deployment) -> RecognizerSettings:
        return RecognizerSettings(
            name="m",
            backend="whisper",
            model="x",
            batch={"max_batch_items": items},
            deployment=deployment,
        )

    assert items_in_flight(rec(16, num_replicas=1, max_ongoing_requests=512)) == 32
    assert items_in_flight(rec(16, num_replicas=2, max_ongoing_requests=24)) == 48  # its cap
    scaled = rec(8, num_replicas=None, autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    assert items_in_flight(scaled) == 64  # the most replicas it may have
