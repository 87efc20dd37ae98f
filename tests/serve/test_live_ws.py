"""Live sessions over real websockets against the ingress's FastAPI app (uvicorn in a
thread, fake VAD and recognizer stages; the streaming VAD is the real Silero): the official
``openai`` client's realtime transcription events, bad frames, keys, the session cap,
disconnects, and FunASR's protocol with a plain websocket client."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets

from serve_app.config import IngressSettings, RealtimeSettings
from tests.serve.live_helpers import FakeStages, chunks, funasr_client, pcm16, serve_in_thread
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize

pytestmark = requires_espeak
TRANSCRIPTION = "conversation.item.input_audio_transcription"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """Two sentences with a 1.2 s pause, silence around: two turns."""
    tmp = tmp_path_factory.mktemp("live_ws")
    parts = [synthesize(s, tmp) for s in SENTENCES[:2]]
    return np.concatenate([silence(0.5), concat_with_pauses(parts, 1.2), silence(1.0)])


async def until(conn, kind: str, timeout_s: float = 20.0) -> list:
    """Events up to and including the first of ``kind``."""
    seen = []
    while True:
        event = await asyncio.wait_for(conn.recv(), timeout_s)
        seen.append(event)
        if event.type == kind:
            return seen


async def send_audio(conn, data: bytes, rate_hz: int, *, pace_s: float = 0.0) -> None:
    for chunk in chunks(data, rate_hz):
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        if pace_s:
            await asyncio.sleep(pace_s)


def test_the_openai_client_gets_every_event_of_two_turns(speech):
    from openai import AsyncOpenAI

    stages = FakeStages()

    async def main(base: str):
        client = AsyncOpenAI(base_url=base + "/v1", api_key="unused")
        async with client.realtime.connect(
            model="gpt-realtime", extra_query={"intent": "transcription"}
        ) as conn:
            created = await conn.recv()
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "m", "language": "en"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                        }
                    },
                    "include": ["item.input_audio_transcription.partial"],
                }
            )
            updated = await conn.recv()
            await send_audio(conn, pcm16(speech), 24_000, pace_s=0.005)
            events = await until(conn, f"{TRANSCRIPTION}.completed")
            events += await until(conn, f"{TRANSCRIPTION}.completed")
            return created, updated, events

    with serve_in_thread(stages.ingress()) as base:
        created, updated, events = asyncio.run(main(base))
    assert created.type == "session.created" and created.session.type == "transcription"
    assert updated.type == "session.updated"
    assert updated.session.audio.input.transcription.language == "en"
    partials = [e for e in events if e.type == f"{TRANSCRIPTION}.partial"]
    assert partials and all(p.transcript.startswith("partial ") for p in partials)
    kinds = [e.type for e in events if e not in partials]
    turn = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        f"{TRANSCRIPTION}.delta",
        f"{TRANSCRIPTION}.completed",
    ]
    assert kinds == turn + turn
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    completed = [e for e in events if e.type == f"{TRANSCRIPTION}.completed"]
    assert committed[1].previous_item_id == committed[0].item_id
    assert [c.item_id for c in completed] == [c.item_id for c in committed]
    for event in completed:
        # The fake recognizer names the item's length: the final is one normal item.
        assert event.transcript.startswith("final ")
        assert event.usage.type == "duration" and event.usage.seconds > 1.0
    deltas = [e for e in events if e.type == f"{TRANSCRIPTION}.delta"]
    assert [d.delta for d in deltas] == [c.transcript for c in completed]
    finals = [j for j in stages.jobs if j.priority == 0]
    assert len(finals) == 2 and all(j.options.language == "en" for j in finals)


def test_bad_frames_get_error_events_and_the_session_goes_on(speech):
    stages = FakeStages()

    async def main(url: str):
        async with websockets.connect(url + "/v1/realtime?intent=transcription") as ws:
            await ws.recv()  # session.created
            bad = [
                "not json",
                json.dumps({"type": "no.such.event"}),
                json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}),
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(b"abc").decode(),
                    }
                ),
                json.dumps({"type": "session.update", "session": {"type": "realtime"}}),
            ]
            errors = []
            for frame in bad:
                await ws.send(frame)
                errors.append(json.loads(await ws.recv()))
            await ws.send(b"\x00\x01")  # binary frames are not this protocol
            errors.append(json.loads(await ws.recv()))
            # Manual turns; a format change after audio was sent is refused.
            update = {
                "type": "session.update",
                "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
            }
            await ws.send(json.dumps(update))
            await ws.recv()
            chunk = base64.b64encode(pcm16(speech[:24_000])).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            update["session"]["audio"]["input"]["format"] = {"type": "audio/pcmu"}
            await ws.send(json.dumps(update))
            errors.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            after = [json.loads(await ws.recv()) for _ in range(3)]
            return errors, after

    with serve_in_thread(stages.ingress()) as base:
        errors, after = asyncio.run(main(base.replace("http", "ws")))
    assert [e["type"] for e in errors] == ["error"] * 7
    params = [e["error"]["param"] for e in errors]
    assert params[1] == "type" and params[2] == "audio" and params[3] == "audio"
    assert params[4] == "session.type" and params[6] == "session.audio.input.format"
    assert [e["type"] for e in after] == [
        "input_audio_buffer.committed",
        f"{TRANSCRIPTION}.delta",
        f"{TRANSCRIPTION}.completed",
    ]
    assert after[2]["transcript"] == "final 1.5s"  # the 24 kHz PCM of 1.5 s of speech


def test_noise_reduction_is_echoed_validated_and_applied(speech):
    """near_field is echoed in session.updated (GA and beta), a bad type is an error event
    naming the field, and the audio the recognizer gets is denoised: with white noise under
    the speech, the committed utterance's noise-only start is much quieter than what was
    sent (the reducer's own test measures how much; here: at least 6 dB, and off is 0 dB)."""
    rng = np.random.default_rng(0)
    noise_only = (rng.standard_normal(16_000) * 0.01).astype(np.float32)  # 1 s
    noisy = np.concatenate([noise_only, speech[:16_000] + noise_only])

    async def main(url: str, noise_reduction):
        async with websockets.connect(url + "/v1/realtime?intent=transcription") as ws:
            await ws.recv()
            bad = {
                "type": "session.update",
                "session": {"audio": {"input": {"noise_reduction": {"type": "studio"}}}},
            }
            await ws.send(json.dumps(bad))
            error = json.loads(await ws.recv())
            beta = {
                "type": "transcription_session.update",
                "session": {"input_audio_noise_reduction": {"type": "far_field"}},
            }
            await ws.send(json.dumps(beta))
            beta_echo = json.loads(await ws.recv())["session"]["input_audio_noise_reduction"]
            update = {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {"turn_detection": None, "noise_reduction": noise_reduction}
                    },
                },
            }
            await ws.send(json.dumps(update))
            echo = json.loads(await ws.recv())["session"]["audio"]["input"]["noise_reduction"]
            for chunk in chunks(pcm16(noisy), 24_000):
                await ws.send(
                    json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "audio": base64.b64encode(chunk).decode(),
                        }
                    )
                )
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while json.loads(await ws.recv())["type"] != f"{TRANSCRIPTION}.completed":
                pass
            return error, beta_echo, echo

    levels = {}
    for setting in ({"type": "near_field"}, None):
        stages = FakeStages()
        with serve_in_thread(stages.ingress()) as base:
            error, beta_echo, echo = asyncio.run(main(base.replace("http", "ws"), setting))
        assert echo == setting and beta_echo == {"type": "far_field"}
        assert error["type"] == "error"
        assert error["error"]["param"] == "session.audio.input.noise_reduction.type"
        (final,) = [job for job in stages.jobs if not job.priority]
        start = np.asarray(final.audio)[4_000:12_000]  # inside the noise-only second
        levels[str(setting)] = 10 * np.log10(np.mean(start**2) / np.mean(noise_only**2))
    assert abs(levels["None"]) < 1.0, levels  # off: the noise as sent (resampled twice)
    assert levels[str({"type": "near_field"})] < -6.0, levels


def test_keys_in_a_header_or_the_browser_subprotocol(monkeypatch):
    monkeypatch.setenv("ASR_API_KEYS", "k1")
    stages = FakeStages()

    async def main(url: str):
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer k1"}) as ws:
            header = json.loads(await ws.recv())["type"]
        async with websockets.connect(
            url, subprotocols=["realtime", "openai-insecure-api-key.k1"]
        ) as ws:
            sub = (ws.subprotocol, json.loads(await ws.recv())["type"])
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=["openai-insecure-api-key.k2"]):
                pass
        return header, sub, refused.value.response.status_code

    with serve_in_thread(stages.ingress()) as base:
        header, sub, status = asyncio.run(main(base.replace("http", "ws") + "/v1/realtime"))
    assert header == "session.created"
    assert sub == ("realtime", "session.created")
    assert status == 403


def test_sessions_over_the_cap_are_refused_and_a_closed_one_frees_everything(speech):
    stages = FakeStages()
    stages.final_delay_s = 30.0  # a decode still queued when the client leaves
    settings = IngressSettings(realtime=RealtimeSettings(max_sessions=1))
    server = stages.ingress(settings=settings)

    async def main(url: str):
        async with websockets.connect(url) as first:
            await first.recv()
            async with websockets.connect(url) as second:
                refused = json.loads(await second.recv())
                await asyncio.sleep(0.1)
                closed = second.close_code
            # Mid-utterance: speech then the turn's end, a final queued, then gone.
            for chunk in chunks(pcm16(speech[:40_000]) + pcm16(silence(1.0)), 24_000):
                msg = {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(chunk).decode(),
                }
                await first.send(json.dumps(msg))
            await asyncio.sleep(1.0)
        for _ in range(100):
            if server.live.slots.open == 0:
                break
            await asyncio.sleep(0.05)
        return refused, closed, server.live.slots.open

    with serve_in_thread(server) as base:
        refused, closed, open_after = asyncio.run(main(base.replace("http", "ws") + "/v1/realtime"))
    assert refused["type"] == "error" and refused["error"]["code"] == "too_many_sessions"
    assert closed == 1013
    assert open_after == 0


def test_funasr_protocol_2pass_offline_messages_and_the_end(speech):
    stages = FakeStages()

    async def main(url: str):
        return await funasr_client(url, speech, mode="2pass", timeout_s=20)

    with serve_in_thread(stages.ingress()) as base:
        messages = asyncio.run(main(base.replace("http", "ws") + "/"))
    offline = [m for m in messages if m.get("mode") == "2pass-offline" and m["text"]]
    assert [m["text"].split()[0] for m in offline] == ["final", "final"]
    # FunASR's clients append what they get: the second utterance comes with its space.
    assert not offline[0]["text"].startswith(" ") and offline[1]["text"].startswith(" final")
    assert all(m["wav_name"] == "demo" for m in messages)
    assert json.loads(offline[1]["timestamp"])[0][0] > json.loads(offline[0]["timestamp"])[0][0]
    assert messages[-1]["is_final"] is True and messages[-1]["is_end"] is True


def test_funasr_online_mode_never_loses_an_utterances_last_word(speech):
    """``online`` mode sends only new words, never taking text back: a partial's last word
    is held back (it may still change), and when the final reads differently from the
    partials (another model, a re-decode) the held-back word comes from the last partial
    instead of being lost. The fake recognizer's partials say ``partial <s>`` and its
    finals ``final <s>``: each utterance must end with a duration, not stop at
    ``partial``."""
    import re

    stages = FakeStages()

    async def main(url: str):
        return await funasr_client(url, speech, mode="online", pace_s=0.03, timeout_s=20)

    with serve_in_thread(stages.ingress()) as base:
        messages = asyncio.run(main(base.replace("http", "ws") + "/funasr"))
    assert {m["mode"] for m in messages} == {"online"}
    text = "".join(m["text"] for m in messages)
    assert "final" not in text  # nothing the partials did not say
    assert re.fullmatch(r"partial \d+\.\ds partial \d+\.\ds", text.strip()), text


def test_funasr_2pass_online_text_comes_from_the_streaming_model(speech, random_models_dir):
    """With a streaming model configured (2pass), FunASR's "2pass-online" messages carry
    what the real streaming Paraformer (random weights) says for the audio so far, fed
    each sample once; "2pass-offline" is still the recognizer's final; no state is left
    once the session ends."""
    import asyncio as aio

    from serve_app.core.types import StreamReply
    from serve_app.online.ingress import IngressServer
    from serve_app.recognizers.funasr_streaming import (
        FunAsrStreamingRecognizer,
        SessionStreams,
    )
    from tests.serve.fake_ingress import MODEL, FakeHandle

    model = FunAsrStreamingRecognizer("paraformer-streaming-tiny", models_dir=random_models_dir)
    stages = FakeStages()
    steps: list[tuple[int, int, str]] = []  # (samples before, new samples, text after)
    sessions: dict[str, SessionStreams] = {}  # what the streaming replica keeps

    async def step(call):
        session = sessions.setdefault(call.session_id, SessionStreams())
        state = session.state_for(call.key, call.start_sample)
        advanced = await aio.to_thread(model.step, state, call.samples)
        session.keep(call.key, advanced)
        steps.append((call.start_sample, len(call.samples), advanced.text))
        return StreamReply(advanced.text, advanced.fed_samples)

    async def end(session_id, key):
        sessions[session_id].end(key)

    plain = stages.ingress()
    server = IngressServer(
        plain._vad,
        plain._recognizers,
        plain._options,
        streamers={MODEL: FakeHandle(step=step, end=end)},
    )

    async def main(url: str):
        return await funasr_client(url, speech, mode="2pass", pace_s=0.03, timeout_s=30)

    with serve_in_thread(server) as base:
        messages = asyncio.run(main(base.replace("http", "ws") + "/funasr"))
    online = [m["text"] for m in messages if m.get("mode") == "2pass-online"]
    offline = [m["text"] for m in messages if m.get("mode") == "2pass-offline" and m["text"]]
    assert steps and online, messages
    # Each call starts where the utterance's state before it ended (no sample twice), or
    # at 0 for the next utterance.
    for (before, size, _), (after, _, _) in zip(steps, steps[1:]):
        assert after in (0, before + size), steps
    assert sum(before == 0 for before, _, _ in steps) == 2  # one state per utterance
    # What the client was sent online is the streaming model's text (its stable part: a
    # partial's last character may still change), never the recognizer's.
    assert any(text.startswith(online[0].strip()) for _, _, text in steps), (online, steps)
    assert not any("partial" in text for text in online)
    assert [t.split()[0] for t in offline] == ["final", "final"]
    assert not server.live.streams  # freed with the utterances, here
    assert sum(len(s) for s in sessions.values()) == 0  # and where they were kept


@pytest.mark.slow  # ~20 s on 2 cores
def test_a_thousand_sessions_opened_and_closed_leave_nothing_behind(speech):
    """Each session streams a second of speech (its VAD state and buffer made, a turn
    started) and leaves mid-utterance; afterwards no session object survives and the
    Python heap is where it was after the first hundred (tracemalloc, client and server in
    this process; the client without compression, whose zlib state outlives its socket)."""
    import gc
    import tracemalloc

    from serve_app.online.realtime.session import LiveSession

    stages = FakeStages()
    stages.final_delay_s = 5.0
    audio = base64.b64encode(pcm16(speech[8_000:24_000])).decode()
    append = json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    async def sessions(url: str, count: int) -> None:
        for _ in range(count):
            async with websockets.connect(url, compression=None) as ws:
                await ws.recv()
                await ws.send(append)

    def live_sessions() -> int:
        gc.collect()
        # type(), not isinstance(): a dead weakref.proxy among the objects raises on __class__
        return sum(type(o) is LiveSession for o in gc.get_objects())

    server = stages.ingress()
    with serve_in_thread(server) as base:
        url = base.replace("http", "ws") + "/v1/realtime"
        asyncio.run(sessions(url, 100))
        time.sleep(0.5)
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        asyncio.run(sessions(url, 900))
        time.sleep(1.0)
        gc.collect()
        diff = tracemalloc.take_snapshot().compare_to(first, "lineno")
        grown = sum(s.size_diff for s in diff)
        tracemalloc.stop()
        assert server.live.slots.open == 0 and server.live.slots.total == 1000
        assert live_sessions() == 0
    print(f"900 sessions: Python heap {grown / 1e6:+.2f} MB")
    assert grown < 2_000_000, grown


def test_a_session_is_refused_while_the_live_models_queue_is_over_its_bound():
    from serve_app.online.admission import AdmissionPolicy

    stages = FakeStages()
    server = stages.ingress(admission={"m": AdmissionPolicy(max_queue_wait_s=0.5)})
    server.live._admission["m"].admit(3600.0)  # an hour of audio queued ahead

    async def main(url: str):
        async with websockets.connect(url) as ws:
            event = json.loads(await ws.recv())
            await asyncio.sleep(0.1)
            return event, ws.close_code

    with serve_in_thread(server) as base:
        event, code = asyncio.run(main(base.replace("http", "ws") + "/v1/realtime"))
    assert event["type"] == "error" and event["error"]["code"] == "overloaded"
    assert event["error"]["type"] == "rate_limit_error" and code == 1013
    assert server.live.slots.open == 0 and server.live.slots.total == 0
