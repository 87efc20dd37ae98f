"""``channels=split``: admission keeps the speech of every channel queued (no Ray).

Each channel's VAD answer used to shrink the request's admission ticket to that channel's
speech, so a split request stayed charged for its smallest channel only and the queue the
next requests were admitted against was too short.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import soundfile as sf
from starlette.testclient import TestClient

from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import SegmentTranscript
from serve_app.online.ingress import IngressServer
from tests.serve.fake_ingress import MODEL, FakeHandle, options

# Channel 0 (left, a 220 Hz tone) has 1 s of speech, channel 1 (right, 440 Hz) 3 s.
SPEECH_MS = {220: 1000, 440: 3000}


def _stereo_wav(seconds: float = 4.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    left, right = (0.3 * np.sin(2 * np.pi * f * t) for f in SPEECH_MS)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_split_request_stays_charged_for_the_speech_of_every_channel():
    queued_while_recognizing: list[float] = []
    server: IngressServer | None = None

    async def segments(samples: np.ndarray) -> list[SpeechSegment]:
        spectrum = np.abs(np.fft.rfft(samples[:16000]))
        tone = min(SPEECH_MS, key=lambda f: abs(f - int(np.argmax(spectrum))))
        await asyncio.sleep(0.05 if tone == 440 else 0.0)  # the long channel answers last
        return [SpeechSegment(0, SPEECH_MS[tone])]

    async def transcribe(job: object) -> SegmentTranscript:
        await asyncio.sleep(0.1)  # both channels' VAD answers are in by now
        assert server is not None
        queued_while_recognizing.append(server._admission[MODEL].queued_audio_s)
        return SegmentTranscript(text="hello")

    recognizer = FakeHandle(transcribe=transcribe)
    server = IngressServer(FakeHandle(segments=segments), {MODEL: recognizer}, options())
    client = TestClient(server.http_app())
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("stereo.wav", _stereo_wav(), "audio/wav")},
        data={"model": MODEL, "channels": "split", "response_format": "verbose_json"},
    )
    assert response.status_code == 200, response.text
    assert {s["speaker"] for s in response.json()["segments"]} == {"left", "right"}
    # Both channels' speech (1 + 3 s) is queued while their segments are recognized.
    assert queued_while_recognizing and min(queued_while_recognizing) >= 4.0 - 1e-6
    assert server._admission[MODEL].queued_audio_s == 0.0  # all released at the end


def test_split_request_timings_sum_the_channels():
    """Each channel's recognition adds to the request's ``recognize`` timing (a shared
    dict once kept only the last channel's)."""
    import time

    from serve_app.config import AudioSettings, ChannelSettings
    from serve_app.core.audio import decode_audio
    from serve_app.core.speaker_request import SpeakerRequest
    from serve_app.online.service import ModelRoute, TranscriptionService

    async def segments(samples: np.ndarray) -> list[SpeechSegment]:
        return [SpeechSegment(0, 1000)]

    async def transcribe(job: object) -> SegmentTranscript:
        time.sleep(0.2)  # blocking on purpose: the channels cannot overlap in wall time
        return SegmentTranscript(text="hello")

    service = TranscriptionService(
        segment=segments,
        routes={MODEL: ModelRoute(MODEL, transcribe)},
        default_model=MODEL,
        limits=AudioSettings(),
        channels=ChannelSettings(),
    )
    audio = decode_audio(_stereo_wav(), AudioSettings(), keep_channels=True)
    result = asyncio.run(
        service.transcribe(audio, model=MODEL, speakers=SpeakerRequest(channels="split"))
    )
    assert len(result.segments) == 2
    # Both channels' steps start together and run one after the other (0.2 s, then 0.4 s
    # from that start): summed, 0.6 s; the last channel's alone would be 0.4 s at most.
    assert result.timings_s["recognize"] >= 0.6 - 0.03
