"""The streaming Paraformer for live 2pass partials, against FunASR's own streaming loop.

Reference: ``AutoModel.generate(input=<the audio's whole chunks>, cache={}, is_final=False,
chunk_size=[0, 10, 5], encoder_chunk_look_back=4, decoder_chunk_look_back=1)``, FunASR's own
chunk loop over one cache, on the same random-weight ``paraformer-streaming-tiny`` and the
same audio. The plain class is fed the audio in
uneven pieces (as a live session's partials come): FunASR keeps samples short of a chunk in
its cache, so the chunks, and the text, must be the same exactly (same machine, same
weights, the same float operations in the same order: no tolerance is needed).
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.types import StreamReply, StreamStep
from serve_app.recognizers.funasr_streaming import (
    CHUNK_SIZE,
    FunAsrStreamingRecognizer,
    SessionStreams,
    StreamChunk,
    StreamState,
)

MODEL = "paraformer-streaming-tiny"


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.standard_normal(16000 * 5) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def streaming(random_models_dir) -> FunAsrStreamingRecognizer:
    return FunAsrStreamingRecognizer(MODEL, models_dir=random_models_dir)


def funasr_reference(folder, audio: np.ndarray) -> str:
    """FunASR's own streaming text of ``audio`` (whole chunks; one call, its own loop)."""
    from funasr import AutoModel

    model = AutoModel(model=str(folder), disable_update=True, device="cpu", disable_pbar=True)
    result = model.generate(
        input=audio,
        cache={},
        is_final=False,
        chunk_size=list(CHUNK_SIZE),
        encoder_chunk_look_back=4,
        decoder_chunk_look_back=1,
    )
    return result[0]["text"]


def test_uneven_pieces_give_funasrs_own_streaming_text(streaming, random_models_dir, audio):
    whole = len(audio) // streaming.chunk_samples * streaming.chunk_samples
    reference = funasr_reference(random_models_dir / MODEL, audio[:whole])
    assert len(reference) > 10  # the random weights do fire tokens: the check means something

    state = StreamState()
    cuts = [0, 5000, 5100, 17000, 30000, 41000, 64000, len(audio)]
    for start, end in zip(cuts, cuts[1:]):
        state = streaming.step(state, audio[start:end])
    assert state.fed_samples == len(audio)
    assert state.text == reference


def test_a_step_leaves_its_input_state_as_it_was(streaming, audio):
    """A call that fails or times out costs nothing: the caller still holds the state
    before it, and the same audio fed again gives the same text."""
    first = streaming.step(StreamState(), audio[:20000])
    again = streaming.step(first, audio[20000:50000])
    snapshot = (first.fed_samples, first.text, sorted(first.cache))
    retried = streaming.step(first, audio[20000:50000])
    assert (first.fed_samples, first.text, sorted(first.cache)) == snapshot
    assert retried.text == again.text and retried.fed_samples == again.fed_samples == 50000


def test_a_batch_isolates_a_failed_item(streaming, audio):
    good = StreamChunk(StreamState(), audio[:20000])
    bad = StreamChunk(StreamState(cache={"encoder": None}), audio[:20000])  # broken cache
    results = streaming.run([good, bad, good])
    assert isinstance(results[1], Exception)
    assert isinstance(results[0], StreamState) and isinstance(results[2], StreamState)
    assert results[0].text == results[2].text


def test_an_offline_model_is_refused(random_models_dir):
    with pytest.raises(ValueError, match="streaming model"):
        FunAsrStreamingRecognizer("paraformer-tiny", models_dir=random_models_dir)


def test_session_streams_hand_out_a_state_only_where_the_caller_expects_it():
    streams = SessionStreams()
    assert streams.state_for("s/1", 0) == StreamState()  # a new utterance
    assert streams.state_for("s/1", 4800) is None  # not here: send it from the start
    streams.keep("s/1", StreamState(fed_samples=4800, text="a"))
    assert streams.state_for("s/1", 4800) == StreamState(fed_samples=4800, text="a")
    assert streams.state_for("s/1", 9600) is None  # the caller is ahead: rebuild
    assert streams.state_for("s/1", 0) == StreamState()  # rebuilt from the start
    streams.end("s/1")
    assert len(streams) == 0
    streams.keep("s/1", StreamState(fed_samples=9600))  # a call that ended after the end
    assert len(streams) == 0


class LocalStreaming:
    """The streaming deployment's step/end (serve_app.online.deployments.streaming), no
    Ray: the states kept per session, each call's (start, new samples) recorded."""

    def __init__(self, streaming) -> None:
        self.streaming = streaming
        self.sessions: dict[str, SessionStreams] = {}
        self.fed: list[tuple[int, int]] = []
        self.replies: list[tuple[int, str]] = []  # (samples fed after the call, its text)

    async def step(self, call: StreamStep) -> StreamReply | None:
        import asyncio

        session = self.sessions.setdefault(call.session_id, SessionStreams())
        state = session.state_for(call.key, call.start_sample)
        if state is None:
            return None
        self.fed.append((call.start_sample, len(call.samples)))
        advanced = await asyncio.to_thread(self.streaming.step, state, call.samples)
        session.keep(call.key, advanced)
        self.replies.append((advanced.fed_samples, advanced.text))
        return StreamReply(advanced.text, advanced.fed_samples)

    def end(self, session_id: str, key: str) -> None:
        self.sessions[session_id].end(key)

    def states(self) -> int:
        return sum(len(s) for s in self.sessions.values())


@pytest.mark.parametrize("lose_state", [False, True])
def test_live_partials_feed_each_sample_once_and_the_state_is_freed(streaming, audio, lose_state):
    """A live session with a streaming model (2pass): each partial sends only the samples
    after those the utterance's state (kept by the streaming side) was fed, the last
    partial's text is the plain class's text for the audio fed, and the state is gone
    once the utterance is committed (or the session is closed mid-utterance). A state
    lost mid-utterance (another replica, a restart) is rebuilt from the utterance's start,
    and the text is the same."""
    import asyncio
    from types import SimpleNamespace

    from serve_app.config import RealtimeSettings
    from serve_app.core.types import RecognitionOptions
    from serve_app.online.realtime.ingress_live import IngressLive
    from serve_app.online.realtime.session import LiveSession, SessionLimits
    from tests.serve.test_live_session import LoudnessVad, Recorder, feed, quiet, transcription

    local = LocalStreaming(streaming)
    service = SimpleNamespace(route=lambda model: SimpleNamespace(name="m"))
    live = IngressLive(
        settings=RealtimeSettings(),
        service=service,  # type: ignore[arg-type]
        admission={},
        partial_calls={},
        request_timeout_s=30.0,
        stream_calls={"m": local},
    )

    async def main(close_mid_utterance: bool) -> Recorder:
        rec = Recorder()

        async def final(samples):
            return transcription(samples)

        async def partial(samples, item_id):
            return await live.decode_partial(
                samples, model="m", options=RecognitionOptions(), key=f"sess/{item_id}"
            )

        session = LiveSession(
            decode_final=final,
            decode_partial=partial,
            emit=rec,
            make_vad=LoudnessVad,
            limits=SessionLimits(partial_interval_s=0.5),
            end_partial=lambda item_id: live.end_partial(f"sess/{item_id}"),
        )
        speech = audio[: 16000 * 4]
        for start in range(0, len(speech), 1600):  # 100 ms frames
            await session.append(speech[start : start + 1600])
            await asyncio.sleep(0.05)  # twice real time: partials land meanwhile
            if lose_state and start == 16000 * 2 and local.states():
                local.sessions.clear()  # the streaming replica restarted
        await asyncio.sleep(0.5)  # the partial in flight lands
        assert len(live.streams) == 1 and local.states() == 1
        if close_mid_utterance:
            await session.close()
        else:
            await feed(session, quiet(1.0))
            await session.finish()
        return rec

    rec = asyncio.run(main(close_mid_utterance=False))
    assert live.streams == {} and local.states() == 0  # committed: freed, on both sides
    partials = [e for e in rec.events if e.kind == "partial"]
    assert len(partials) >= 2 and len(local.fed) >= 2
    # Every sample once, in order: each call starts where the state before it ended
    # (after a lost state, once more from the utterance's start).
    restarts = 0
    for (before, size), (after, _) in zip(local.fed, local.fed[1:]):
        if after == 0:
            restarts += 1
        else:
            assert after == before + size
    assert restarts == int(lose_state)
    # The last partial is the streaming text of the audio its call had been fed, as one
    # call over that audio gives it. (The speech starts at the stream's first sample, so
    # the utterance does too. On a loaded machine the last call may land after the
    # commit, its partial dropped: the partial's own call is the one to compare.)
    total = next(end for end, text in reversed(local.replies) if text == partials[-1].text)
    assert partials[-1].text == streaming.step(StreamState(), audio[:total]).text

    local.fed.clear()
    local.replies.clear()
    asyncio.run(main(close_mid_utterance=True))
    assert live.streams == {} and local.states() == 0  # the client left mid-utterance
