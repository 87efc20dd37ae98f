"""``stream=true``: segment reports in order from TranscriptionService (fakes, no Ray),
the SSE stream's error event, and the official openai client against the shared app."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

import numpy as np
import pytest
import soundfile as sf

from serve_app.config import AudioSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.errors import RecognitionError
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import SegmentTranscript
from serve_app.online.service import ModelRoute, SegmentDone, TranscriptionService
from serve_app.online.streaming import TranscriptStream
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

SPANS_MS = [(0, 1000), (2000, 3000), (4000, 5000)]


class GatedRecognizer:
    """Each segment (identified by its length) finishes only when the test opens its gate."""

    def __init__(self) -> None:
        self.gates = [asyncio.Event() for _ in SPANS_MS]
        self.fail_index: int | None = None

    async def __call__(self, job):
        index = round(job.duration_s * 1000) // 1000 - 1  # segment i lasts (i + 1) s
        await self.gates[index].wait()
        if index == self.fail_index:
            raise RecognitionError(f"segment {index} failed")
        return SegmentTranscript(text=f"word{index}")


def service(recognizer) -> TranscriptionService:
    async def segments(samples):
        # Segment i lasts i + 1 seconds so the fake recognizer can tell them apart.
        return [SpeechSegment(s, s + 1000 * (i + 1)) for i, (s, _) in enumerate(SPANS_MS)]

    return TranscriptionService(
        segment=segments,
        routes={"m": ModelRoute("m", recognizer)},
        default_model="m",
        limits=AudioSettings(),
    )


def audio() -> DecodedAudio:
    return DecodedAudio(np.zeros(16000 * 8, np.float32), 16000, "wav")


async def _until(predicate, what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


def test_segments_are_reported_in_order_as_soon_as_earlier_ones_are_done():
    async def scenario():
        recognizer = GatedRecognizer()
        svc = service(recognizer)
        seen: list[SegmentDone] = []

        async def on_segment(done: SegmentDone) -> None:
            seen.append(done)

        task = asyncio.ensure_future(svc.transcribe(audio(), model="m", on_segment=on_segment))
        recognizer.gates[2].set()  # the last finishes first: nothing may be reported
        await asyncio.sleep(0.05)
        assert seen == []
        recognizer.gates[0].set()
        await _until(lambda: len(seen) == 1, "segment 0 reported while 1 still runs")
        assert not task.done()
        recognizer.gates[1].set()  # now 1 and the already finished 2 follow, in order
        result = await task
        plain = await svc.transcribe(audio(), model="m")  # all gates open now
        return seen, result, plain

    seen, result, plain = asyncio.run(scenario())
    assert [d.index for d in seen] == [0, 1, 2]
    assert [d.text for d in seen] == ["word0", "word1", "word2"]
    assert [d.pieces[0].start_s for d in seen] == [0.0, 2.0, 4.0]  # the audio's time
    # Observing changes nothing in what transcribe returns (but its stage timings).
    assert dataclasses.replace(result, timings_s={}) == dataclasses.replace(plain, timings_s={})
    assert result.text == "word0 word1 word2"


def _events(chunks: list[bytes]) -> list[dict]:
    text = b"".join(chunks).decode()
    assert text.endswith("\n\n")
    return [json.loads(block.removeprefix("data: ")) for block in text.strip().split("\n\n")]


def _stream_of(svc: TranscriptionService, finished: list[bool]) -> TranscriptStream:
    from serve_app.online.http_errors import error_body

    return TranscriptStream(
        lambda on_segment: svc.transcribe(audio(), model="m", on_segment=on_segment),
        error_body=lambda exc: error_body(exc, "req-1")[1],
        on_finish=lambda: finished.append(True),
    )


def _run_open_gates(fail_index: int | None = None) -> tuple[list, list[bool]]:
    """Stream a request whose items all finish at once (one failing at ``fail_index``)."""

    async def scenario():
        recognizer = GatedRecognizer()
        if fail_index is not None:
            recognizer.fail_index = fail_index
        for gate in recognizer.gates:
            gate.set()
        finished: list[bool] = []
        stream = _stream_of(service(recognizer), finished)
        stream.start()
        return [chunk async for chunk in stream.events()], finished

    return asyncio.run(scenario())


def test_stream_events_concatenate_to_the_text_then_done():
    chunks, finished = _run_open_gates()
    events = _events(chunks)
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == "word0 word1 word2"
    assert [e["start"] for e in events[:-1]] == [0.0, 2.0, 4.0]
    assert finished == [True]


def test_an_error_mid_stream_ends_it_with_an_error_event():
    chunks, finished = _run_open_gates(fail_index=1)
    events = _events(chunks)
    assert [e["type"] for e in events] == ["transcript.text.delta", "error"]
    assert events[0]["delta"] == "word0"  # what was done before the failure was sent
    error = events[1]
    assert error["error"]["message"] == "segment 1 failed"
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == RecognitionError("x").code
    assert error["request_id"] == "req-1"
    assert finished == [True]


def test_a_stream_cancelled_before_it_ran_still_releases_and_says_why():
    async def scenario():
        finished: list[bool] = []
        stream = _stream_of(service(GatedRecognizer()), finished)
        stream.start()
        assert stream._task is not None
        stream._task.cancel()  # before its first step: no finally inside it runs
        chunks = [chunk async for chunk in stream.events()]
        return chunks, finished

    chunks, finished = asyncio.run(scenario())
    assert [e["type"] for e in _events(chunks)] == ["error"]
    assert finished == [True]


def test_the_openai_client_parses_our_events_and_raises_on_the_error_event():
    """Our bytes, fed to the official client through a mock transport (no server)."""
    import httpx
    import openai

    from serve_app.online.http_errors import error_body
    from serve_app.online.streaming import delta_event, done_event, error_event

    def client_for(body: bytes):
        def handler(request: httpx.Request) -> httpx.Response:
            assert b'name="stream"' in request.content  # sent as a form field
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

        return openai.OpenAI(
            base_url="http://test/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        )

    def create(client):
        return client.audio.transcriptions.create(
            model="m", file=("a.wav", b"RIFF", "audio/wav"), stream=True
        )

    ok = delta_event("hello", 0.0, 1.0) + delta_event(" world", 1.0, 2.0)
    events = list(create(client_for(ok + done_event({"text": "hello world"}))))
    assert [type(e).__name__ for e in events] == [
        "TranscriptionTextDeltaEvent",
        "TranscriptionTextDeltaEvent",
        "TranscriptionTextDoneEvent",
    ]
    assert "".join(e.delta for e in events[:2]) == events[2].text == "hello world"
    failed = ok + error_event(error_body(RecognitionError("segment 3 failed"), "req-9")[1])
    stream = create(client_for(failed))
    with pytest.raises(openai.APIError, match="segment 3 failed"):
        list(stream)


# --- the official openai client against the shared app ----------------------------------

MODEL = "whisper-1"
MULTI_SEGMENT_MODEL = "paraformer-tiny-random"  # no packing: one item per VAD segment


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("streaming")
    audio = concat_with_pauses([synthesize(t, tmp) for t in SENTENCES[6:9]], pause_s=1.6)
    # A few samples of noise at the end: bytes no other test uploads (their cached
    # answers must not stand in for this module's requests).
    tail = np.random.default_rng().uniform(-1e-3, 1e-3, 160).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([audio, tail]), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(asr_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{asr_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _stream(client, data: bytes, model: str, **extra):
    return list(
        client.audio.transcriptions.create(
            model=model,
            file=("speech.wav", data, "audio/wav"),
            stream=True,
            extra_body=extra or None,
        )
    )


@requires_espeak
@pytest.mark.slow
def test_openai_client_stream_gives_the_non_stream_text(client, http, speech):
    plain = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("speech.wav", speech, "audio/wav")},
        data={"model": MODEL, "cache": "false"},
    )
    assert plain.status_code == 200, plain.text
    events = _stream(client, speech, MODEL, cache="false")
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}
    assert len(types) >= 2
    assert events[-1].text == plain.json()["text"]
    assert events[-1].text.strip()


@requires_espeak
@pytest.mark.slow
def test_stream_of_several_segments_in_order_and_a_cached_replay(client, http, speech):
    events = _stream(client, speech, MULTI_SEGMENT_MODEL)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 3  # one per VAD segment (three sentences)
    starts = [(e.model_extra or {})["start"] for e in deltas]  # our extension
    assert starts == sorted(starts)  # in audio order
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text  # no post-stage on this model
    # The stream's admission ticket was released when its transcription ended.
    system = http.get("/v1/system").json()["models"][MULTI_SEGMENT_MODEL]
    assert system["queued_audio_s"] == pytest.approx(0.0, abs=1e-6)
    # The same request again: answered from the cache, replayed as the same events.
    with http.stream(
        "POST",
        "/v1/audio/transcriptions",
        files={"file": ("speech.wav", speech, "audio/wav")},
        data={"model": MULTI_SEGMENT_MODEL, "stream": "true"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-cache"] == "hit"
        replay = [
            json.loads(line.removeprefix("data: "))
            for line in resp.iter_lines()
            if line.startswith("data: ")
        ]
    assert replay[-1] == {"type": "transcript.text.done", "text": done.text}
    assert "".join(e["delta"] for e in replay[:-1]) == done.text


@pytest.mark.slow
def test_errors_before_the_stream_stay_json_with_their_status(http):
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("bad.wav", b"RIFF0000garbage", "audio/wav")},
        data={"stream": "true"},
    )
    assert resp.status_code in (400, 415)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"]
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", b"x", "audio/wav")},
        data={"stream": "maybe"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream"
