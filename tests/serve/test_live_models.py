"""Live finals on the real models (FSMN-VAD + Whisper tiny.en plain classes, in-process,
as the fast path's ingress): a committed utterance reads as the same audio sent as a file
(within the reference margin: the file path decodes the VAD's speech span, the commit the
whole buffer, and Whisper int8 can read those differently on one CPU and alike on another),
and a whole stream's finals are as good as faster-whisper's own transcribe."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import soundfile as sf

from tests.reference import assert_wer_near_reference
from tests.serve.live_helpers import chunks, pcm16, serve_in_thread
from tests.serve.test_fast_path import server  # noqa: F401  (the real-model ingress)
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize

pytestmark = requires_espeak
COMPLETED = "conversation.item.input_audio_transcription.completed"


async def stream(base: str, audio: np.ndarray, *, commits: list[int] | None = None) -> list[str]:
    """Send ``audio`` (16 kHz) fast; with ``commits`` (sample positions), manual turns
    committed there; else server VAD. The completed transcripts, in order."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused")
    turn = None if commits is not None else {"type": "server_vad"}
    session = {
        "type": "transcription",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": turn}
        },
    }
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.recv()
        await conn.session.update(session=session)
        await conn.recv()
        bounds = [0, *(commits or []), len(audio)]
        for start, end in zip(bounds, bounds[1:]):
            for chunk in chunks(pcm16(audio[start:end], 16_000), 16_000):
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            if commits is not None:
                await conn.input_audio_buffer.commit()
        expected = len(commits) if commits is not None else None
        texts: list[str] = []
        while expected is None or len(texts) < expected:
            try:
                event = await asyncio.wait_for(conn.recv(), 60 if expected else 8)
            except TimeoutError:
                break  # server VAD: no more turns
            if event.type == COMPLETED:
                texts.append(event.transcript)
    return texts


def test_a_committed_utterance_reads_as_the_same_audio_sent_as_a_file(server, tmp_path):  # noqa: F811
    from openai import OpenAI
    from starlette.testclient import TestClient

    parts = [synthesize(t, tmp_path) for t in SENTENCES[2:4]]
    utterances = [np.concatenate([silence(0.3), p, silence(0.3)]) for p in parts]
    audio = np.concatenate(utterances)
    commits = list(np.cumsum([len(u) for u in utterances]))
    with serve_in_thread(server) as base:
        live = asyncio.run(stream(base, audio, commits=commits))
    files = []
    with TestClient(server.http_app()) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        for utterance in utterances:
            buf = io.BytesIO()
            sf.write(buf, utterance, 16000, format="WAV", subtype="FLOAT")
            files.append(
                client.audio.transcriptions.create(
                    model="whisper-1", file=("u.wav", buf.getvalue(), "audio/wav")
                ).text
            )
    assert len(live) == len(files) == len(utterances) and all(live) and all(files)
    assert_wer_near_reference(SENTENCES[2:4], live, files)


def test_server_vad_finals_are_as_good_as_faster_whisper(server, whisper_reference, tmp_path):  # noqa: F811
    texts = SENTENCES[:3]
    audio = np.concatenate(
        [
            silence(0.5),
            concat_with_pauses([synthesize(t, tmp_path) for t in texts], 1.0),
            silence(1.0),
        ]
    )
    with serve_in_thread(server) as base:
        live = asyncio.run(stream(base, audio))
    assert len(live) == len(texts)  # one turn per sentence
    reference = whisper_reference.transcribe(audio)
    assert_wer_near_reference([" ".join(texts)], [" ".join(live)], [reference])
