"""Diarization is bounded for any request length (issue 26).

- Clustering memory does not grow with the window count: a 4-hour request is ~19k windows,
  which SciPy's average linkage held as a condensed distance matrix (~1.4 GB).
- A diarize request longer than ``max_audio_s`` is refused with a 413 before any
  recognition or embedding starts.
"""

from __future__ import annotations

import asyncio
import tracemalloc

import numpy as np
import pytest

from serve_app.config import AudioSettings, ChannelSettings, DiarizationSettings
from serve_app.core import diarization as dz
from serve_app.core.audio import DecodedAudio
from serve_app.core.errors import AudioTooLongError
from serve_app.core.pipeline import Embed, diarize_signal
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.speaker_request import SpeakerRequest
from serve_app.core.types import SegmentTranscript
from serve_app.online.service import ModelRoute, TranscriptionService
from tests.speakers.test_diarize import synthetic_embeddings

# 8,000 windows of 256 floats (a 100-minute request): the rows themselves are 16 MB
# (float64 after normalising), SciPy's condensed distances alone would be 256 MB.
NUM_WINDOWS = 8_000
PEAK_BOUND_BYTES = 96 * 2**20


def test_clustering_memory_is_bounded_whatever_the_window_count() -> None:
    rows, truth = synthetic_embeddings([3_000, 2_000, 3_000], dim=256, noise=0.9, seed=4)
    assert len(rows) == NUM_WINDOWS
    tracemalloc.start()
    try:
        labels = dz.cluster_embeddings(rows, durations_s=np.full(len(rows), 1.5))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < PEAK_BOUND_BYTES, f"peak {peak_bytes / 2**20:.0f} MiB"
    # ... and the answer is still right: three speakers, each window with its own.
    assert len(set(labels.tolist())) == 3
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    assert len(pairs) == 3


def test_turns_of_a_long_request_take_linear_time() -> None:
    """speaker_turns over ~19k windows in ~5k spans (4 hours) stays fast: it once
    searched every span for every window."""
    spans = [(i * 3.0, i * 3.0 + 2.6) for i in range(5_000)]
    windows = dz.embedding_windows(spans, window_s=1.5, hop_s=0.75)
    labels = [(i // 7) % 3 for i in range(len(windows))]
    import time

    started = time.perf_counter()
    turns = dz.speaker_turns(windows, labels, spans)
    assert time.perf_counter() - started < 5.0
    assert turns[0].start_s == 0.0 and turns[-1].end_s == pytest.approx(spans[-1][1])


def test_an_over_long_diarize_signal_is_refused_before_its_first_step() -> None:
    settings = DiarizationSettings(max_audio_s=5.0)
    samples = np.ones(6 * 16_000, np.float32)
    segments = [SpeechSegment(0, 6_000)]
    with pytest.raises(AudioTooLongError) as info:
        diarize_signal(samples, segments, dz.DiarizationOptions(), settings)
    assert info.value.param == "diarize" and "max_audio_s" in info.value.message
    # Under the bound the steps run as before: the first call embeds the windows.
    steps = diarize_signal(
        samples[: 4 * 16_000], [SpeechSegment(0, 4_000)], dz.DiarizationOptions(), settings
    )
    (call,) = next(steps)
    assert isinstance(call, Embed) and len(call.jobs) > 1


def test_the_service_refuses_an_over_long_diarize_request_before_recognizing() -> None:
    calls = {"vad": 0, "recognize": 0, "embed": 0}

    async def segment(samples: np.ndarray) -> list[SpeechSegment]:
        calls["vad"] += 1
        return [SpeechSegment(0, len(samples) * 1000 // 16_000)]

    async def recognize(job) -> SegmentTranscript:
        calls["recognize"] += 1
        return SegmentTranscript(text="x")

    async def embed(job) -> np.ndarray:
        calls["embed"] += 1
        return np.ones(8, np.float32)

    service = TranscriptionService(
        segment=segment,
        routes={"m": ModelRoute("m", recognize)},
        default_model="m",
        limits=AudioSettings(),
        embed=embed,
        diarization_settings=DiarizationSettings(max_audio_s=10.0),
        channels=ChannelSettings(),
    )
    audio = DecodedAudio(np.full(12 * 16_000, 0.1, np.float32), 16_000, "wav")
    with pytest.raises(AudioTooLongError):
        asyncio.run(service.transcribe(audio, model=None, speakers=SpeakerRequest(diarize=True)))
    assert calls == {"vad": 0, "recognize": 0, "embed": 0}  # refused before any stage
    # Without diarize the same audio is transcribed.
    result = asyncio.run(service.transcribe(audio, model=None))
    assert result.text == "x" and calls["recognize"] >= 1
