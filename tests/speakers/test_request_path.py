"""Channel split and diarization in TranscriptionService, with fake stages (no Ray, no model).

Every fake is driven by the audio itself: each talker's samples carry a marker value, the
fake recognizer writes the marker into its text and the fake embedder maps it to a fixed
random direction, so a segment labelled with the wrong channel or speaker shows.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.config import AudioSettings, ChannelSettings, DiarizationSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.diarization import DiarizationOptions
from serve_app.core.errors import InvalidRequestError
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.speaker_request import SpeakerRequest
from serve_app.core.types import SegmentTranscript, WordTiming
from serve_app.online.service import ModelRoute, TranscriptionService

RATE = 16000


async def _energy_vad(samples: np.ndarray) -> list[SpeechSegment]:
    """Speech = runs of non-zero 10 ms frames (gaps of >= 0.3 s end a segment)."""
    frames = np.abs(samples[: len(samples) // 160 * 160]).reshape(-1, 160).max(axis=1) > 0
    out, start, quiet = [], None, 0
    for i, loud in enumerate(frames):
        if loud:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= 30:
                out.append(SpeechSegment(start * 10, (i - quiet + 1) * 10))
                start, quiet = None, 0
    if start is not None:
        out.append(SpeechSegment(start * 10, (len(frames) - quiet) * 10))
    return out


async def _recognize(job) -> SegmentTranscript:
    markers = sorted({round(float(v)) for v in job.audio if v})
    return SegmentTranscript(text=" ".join(f"m{m}" for m in markers))


def _direction(marker: int) -> np.ndarray:
    v = np.random.default_rng(marker).standard_normal(64).astype(np.float32)
    return v / np.linalg.norm(v)


class _FakeEmbedder:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, job) -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(0)
        values = job.audio[job.audio != 0]
        marker = int(np.bincount(np.round(values).astype(int)).argmax())
        return _direction(marker)


def _service(embed=None, channels: ChannelSettings | None = None) -> TranscriptionService:
    return TranscriptionService(
        segment=_energy_vad,
        routes={"m": ModelRoute("m", _recognize)},
        default_model="m",
        limits=AudioSettings(),
        embed=embed,
        diarization_settings=DiarizationSettings(),
        channels=channels or ChannelSettings(names=("agent", "customer")),
    )


def _talk(marker: float, seconds: float) -> np.ndarray:
    return np.full(round(seconds * RATE), marker, np.float32)


def _quiet(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def _stereo(left: np.ndarray, right: np.ndarray) -> DecodedAudio:
    return DecodedAudio((left + right) / 2, 16000, "wav/pcm_16", channels=(left, right))


def test_split_labels_every_segment_with_its_channel_and_merges_by_start():
    left = np.concatenate([_talk(1, 2), _quiet(3), _talk(1, 2), _quiet(1)])
    right = np.concatenate([_quiet(2.5), _talk(2, 2), _quiet(3.5)])
    tr = asyncio.run(
        _service().transcribe(
            _stereo(left, right), model=None, speakers=SpeakerRequest(channels="split")
        )
    )
    assert [(s.speaker, s.text) for s in tr.segments] == [
        ("agent", "m1"),
        ("customer", "m2"),
        ("agent", "m1"),
    ]
    assert [s.start_s for s in tr.segments] == sorted(s.start_s for s in tr.segments)
    assert [s.id for s in tr.segments] == [0, 1, 2]
    assert tr.text == "m1 m2 m1"
    assert set(tr.speakers) == {"agent", "customer"}
    assert tr.speakers["agent"] == pytest.approx(4.0, abs=0.05)


def test_mix_keeps_todays_behaviour():
    left = np.concatenate([_talk(1, 2), _quiet(3)])
    right = np.concatenate([_quiet(2.5), _talk(2, 2), _quiet(0.5)])
    tr = asyncio.run(_service().transcribe(_stereo(left, right), model=None))
    assert all(s.speaker is None for s in tr.segments)
    assert tr.speakers == {}


def test_silent_channel_gives_no_segments():
    left = np.concatenate([_talk(1, 2), _quiet(1)])
    tr = asyncio.run(
        _service().transcribe(
            _stereo(left, _quiet(3)), model=None, speakers=SpeakerRequest(channels="split")
        )
    )
    assert [s.speaker for s in tr.segments] == ["agent"]
    assert tr.speakers == {"agent": pytest.approx(2.0, abs=0.05), "customer": 0.0}


def test_more_channels_than_the_maximum_is_a_400():
    channels = tuple(_talk(i + 1, 1) for i in range(3))
    audio = DecodedAudio(channels[0], 16000, "wav", channels=channels)
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(_service().transcribe(audio, model=None, speakers=SpeakerRequest("split")))
    assert info.value.param == "channels"
    names = ChannelSettings(names=("a",), max_channels=3)
    tr = asyncio.run(
        _service(channels=names).transcribe(audio, model=None, speakers=SpeakerRequest("split"))
    )
    assert {s.speaker for s in tr.segments} == {"a", "channel_2", "channel_3"}


def _conversation(first: int, second: int) -> np.ndarray:
    # A: 4 s, pause, B: 4 s, pause, A: 3 s with B's 3 s straight after (no pause): one
    # VAD segment that spans a speaker change.
    return np.concatenate(
        [
            _talk(first, 4),
            _quiet(1),
            _talk(second, 4),
            _quiet(1),
            _talk(first, 3),
            _talk(second, 3),
            _quiet(0.5),
        ]
    )


def test_diarize_labels_speakers_and_splits_a_segment_at_the_change():
    embed = _FakeEmbedder()
    audio = DecodedAudio(_conversation(3, 4), 16000, "wav")
    tr = asyncio.run(
        _service(embed).transcribe(audio, model=None, speakers=SpeakerRequest(diarize=True))
    )
    assert embed.calls > 10
    labels = [(s.speaker, round(s.start_s), round(s.end_s)) for s in tr.segments]
    assert labels == [
        ("speaker_1", 0, 4),
        ("speaker_2", 5, 9),
        ("speaker_1", 10, 13),
        ("speaker_2", 13, 16),
    ]
    assert tr.speakers == {
        "speaker_1": pytest.approx(7, abs=0.6),
        "speaker_2": pytest.approx(7, abs=0.6),
    }
    # json/text unchanged: the request's text is the recognizer's.
    plain = asyncio.run(_service(embed).transcribe(audio, model=None))
    assert tr.text == plain.text
    assert all(s.speaker is None for s in plain.segments)


def test_diarize_splits_at_word_timestamps_when_present():
    async def with_words(job) -> SegmentTranscript:
        n = len(job.audio) // RATE
        words = tuple(
            WordTiming(float(i), i + 0.9, f"m{round(float(job.audio[i * RATE]))}") for i in range(n)
        )
        return SegmentTranscript(text=" ".join(w.word for w in words), words=words)

    service = TranscriptionService(
        segment=_energy_vad,
        routes={"m": ModelRoute("m", with_words)},
        default_model="m",
        limits=AudioSettings(),
        embed=_FakeEmbedder(),
    )
    audio = DecodedAudio(_conversation(5, 6), 16000, "wav")
    tr = asyncio.run(service.transcribe(audio, model=None, speakers=SpeakerRequest(diarize=True)))
    for seg in tr.segments:
        marker = {w.word for w in seg.words}
        assert len(marker) == 1, seg  # a piece never holds words of two talkers
        assert seg.speaker == {"m5": "speaker_1", "m6": "speaker_2"}[marker.pop()]


def test_num_speakers_is_honoured():
    audio = DecodedAudio(_conversation(7, 8), 16000, "wav")
    tr = asyncio.run(
        _service(_FakeEmbedder()).transcribe(
            audio,
            model=None,
            speakers=SpeakerRequest(diarize=True, diarization=DiarizationOptions(num_speakers=1)),
        )
    )
    assert {s.speaker for s in tr.segments} == {"speaker_1"}


def test_diarize_without_a_speaker_stage_is_a_400():
    audio = DecodedAudio(_conversation(1, 2), 16000, "wav")
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(_service().transcribe(audio, model=None, speakers=SpeakerRequest(diarize=True)))
    assert info.value.param == "diarize"


def test_concurrent_diarized_requests_cluster_their_own_windows():
    embed = _FakeEmbedder()
    service = _service(embed)

    async def run_all():
        return await asyncio.gather(
            *(
                service.transcribe(
                    DecodedAudio(_conversation(10 + 2 * i, 11 + 2 * i), 16000, "wav"),
                    model=None,
                    speakers=SpeakerRequest(diarize=True),
                )
                for i in range(16)
            )
        )

    for i, tr in enumerate(asyncio.run(run_all())):
        by_speaker = {s.speaker: set(s.text.split()) for s in tr.segments}
        assert by_speaker == {"speaker_1": {f"m{10 + 2 * i}"}, "speaker_2": {f"m{11 + 2 * i}"}}
