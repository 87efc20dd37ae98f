"""The fast path's end-to-end request: the official ``openai`` client -> the FastAPI app ->
the online pipeline -> the real FSMN-VAD and Whisper tiny.en plain classes, in-process.

No Ray: the ingress's deployment handles are local async callables around the same plain
objects the replicas run (``FsmnVad``, ``BatchedRecognizer``), so ``-m "not slow"`` still
sends one real transcription through every layer but Serve's transport. The text is
compared with faster-whisper's own sequential transcribe of the same audio on this
machine (tests/reference.py), never with fixed words.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from serve_app.config import AudioSettings, RecognizerSettings, VadSettings
from serve_app.online.ingress import IngressOptions, IngressServer
from tests.reference import assert_wer_near_reference
from tests.serve.fake_ingress import FakeHandle
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def server(models_dir: Path) -> IngressServer:
    from serve_app.recognizers.factory import build_recognizer
    from serve_app.vad.detectors import FsmnVad

    vad = FsmnVad(VadSettings(), models_dir=models_dir)
    recognizer = build_recognizer(
        RecognizerSettings(
            name=MODEL, backend="whisper", model=MODEL, precision="int8", language="en"
        ),
        models_dir,
    )

    async def segments(samples: np.ndarray):
        return await asyncio.to_thread(vad.segments, samples)

    async def transcribe(job):
        (result,) = await asyncio.to_thread(recognizer.transcribe_batch, [job])
        if isinstance(result, Exception):
            raise result
        return result

    async def capabilities() -> dict:
        return recognizer.capabilities().to_json()

    options = IngressOptions(
        limits=AudioSettings(),
        model_names={MODEL: MODEL, "whisper-1": MODEL},
        default_model=MODEL,
        default_options={},
    )
    handle = FakeHandle(transcribe=transcribe, capabilities=capabilities)
    return IngressServer(FakeHandle(segments=segments), {MODEL: handle}, options)


@requires_espeak
def test_the_openai_client_transcribes_speech_end_to_end(server, whisper_reference, tmp_path):
    from openai import OpenAI

    texts = SENTENCES[:2]
    audio = concat_with_pauses([synthesize(t, tmp_path) for t in texts], pause_s=1.0)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    with TestClient(server.http_app()) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=("speech.wav", buf.getvalue(), "audio/wav"),
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert len(result.segments) >= 2  # one per sentence at least: the VAD cut the pause
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration + 0.01
    reference = whisper_reference.transcribe(audio)
    assert_wer_near_reference([" ".join(texts)], [result.text], [reference])
