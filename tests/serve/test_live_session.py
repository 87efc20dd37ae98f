"""LiveSession (serve_app.online.realtime.session) with fake decoders and a fake VAD: turn
events, commits, finals in utterance order, partials, clear, close, per-session caps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.core.errors import InvalidRequestError
from serve_app.core.transcript import Transcription
from serve_app.core.turns import TurnSettings
from serve_app.online.realtime.session import END_PAD_MS, LiveEvent, LiveSession, SessionLimits

RATE = 16_000


class LoudnessVad:
    """Probability 0.9 for a 512-sample window with sound, 0.0 for silence."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._pending, samples])
        n = len(audio) // 512
        self._pending = audio[n * 512 :]
        windows = audio[: n * 512].reshape(-1, 512)
        return np.where(np.abs(windows).mean(axis=1) > 0.01, 0.9, 0.0).astype(np.float32)


def sound(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(int(seconds * 1000))
    return (rng.standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def transcription(samples: np.ndarray) -> Transcription:
    return Transcription(
        text=f"{len(samples)}", segments=(), duration_s=len(samples) / RATE, model="m"
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[LiveEvent] = []

    async def __call__(self, event: LiveEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def session(recorder: Recorder, final=None, partial=None, **kwargs) -> LiveSession:
    async def default_final(samples):
        return transcription(samples)

    kwargs.setdefault("turns", TurnSettings(prefix_padding_ms=300, silence_duration_ms=500))
    return LiveSession(
        decode_final=final or default_final,
        decode_partial=partial,
        emit=recorder,
        make_vad=LoudnessVad,
        **kwargs,
    )


async def feed(live: LiveSession, audio: np.ndarray, chunk_s: float = 0.1, pace_s=None) -> None:
    """``pace_s``: wall seconds between chunks (None: as fast as it reads, no yield)."""
    step = int(chunk_s * RATE)
    for i in range(0, len(audio), step):
        await live.append(audio[i : i + step])
        if pace_s is not None:
            await asyncio.sleep(pace_s)


def test_a_turn_is_started_stopped_committed_and_decoded_with_its_padding():
    async def main():
        rec = Recorder()
        live = session(rec)
        await feed(live, np.concatenate([quiet(1.0), sound(1.0), quiet(1.0)]))
        await live.finish()
        return rec

    rec = asyncio.run(main())
    assert rec.kinds() == ["started", "stopped", "committed", "final"]
    started, stopped, committed, final = rec.events
    assert started.item_id == stopped.item_id == committed.item_id == final.item_id
    assert abs(started.at_ms - 1000) <= 32 and abs(stopped.at_ms - 2000) <= 32
    assert committed.previous_item_id is None
    # The utterance: 300 ms before the start, the speech, END_PAD_MS after its end.
    expected_ms = 300 + (stopped.at_ms - started.at_ms) + END_PAD_MS
    assert abs(int(final.text) - expected_ms * 16) <= 16
    assert final.at_ms == started.at_ms - 300 and final.end_ms == stopped.at_ms + END_PAD_MS


def test_finals_are_reported_in_utterance_order_and_items_chain():
    async def main():
        rec = Recorder()
        calls = 0

        async def final(samples):
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.3 if calls == 1 else 0.0)  # the first is the slowest
            return transcription(samples)

        live = session(rec, final=final)
        audio = np.concatenate([sound(0.6), quiet(0.8), sound(0.4), quiet(0.8)])
        await feed(live, audio)
        await live.finish()
        return rec

    rec = asyncio.run(main())
    committed = [e for e in rec.events if e.kind == "committed"]
    finals = [e for e in rec.events if e.kind == "final"]
    assert len(committed) == len(finals) == 2
    assert committed[1].previous_item_id == committed[0].item_id
    assert [f.item_id for f in finals] == [c.item_id for c in committed]


def test_partials_come_while_speaking_one_at_a_time_and_never_after_the_final():
    async def main():
        rec = Recorder()
        in_flight, most = 0, 0
        lengths: list[int] = []

        async def partial(samples, item_id):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.25)  # longer than the partial interval's wall time
            in_flight -= 1
            lengths.append(len(samples))
            return f"p{len(samples)}"

        live = session(rec, partial=partial, limits=SessionLimits(partial_interval_s=0.3))
        for chunk in np.array_split(np.concatenate([sound(2.0), quiet(0.8)]), 28):
            await live.append(chunk)
            await asyncio.sleep(0.05)  # 0.1 s of audio in 0.05 s of wall time
        await live.finish()
        return rec, most, lengths

    rec, most, lengths = asyncio.run(main())
    kinds = rec.kinds()
    assert kinds.count("partial") >= 3 and most == 1
    assert lengths == sorted(lengths)  # the utterance so far, growing
    assert "partial" not in kinds[kinds.index("final") :]


def test_manual_commits_hold_everything_and_refuse_an_empty_buffer():
    async def main():
        rec = Recorder()
        live = session(rec, turns=None)
        await feed(live, np.concatenate([quiet(0.5), sound(0.5)]))
        item = await live.commit()
        await live.finish()
        with pytest.raises(InvalidRequestError):
            await live.commit()
        return rec, item

    rec, item = asyncio.run(main())
    assert rec.kinds() == ["committed", "final"]
    assert rec.events[0].item_id == item and int(rec.events[1].text) == RATE  # all of it


def test_the_manual_buffer_is_capped():
    async def main():
        live = session(Recorder(), turns=None, limits=SessionLimits(max_buffer_s=1.0))
        await live.append(sound(0.8))
        with pytest.raises(InvalidRequestError):
            await live.append(sound(0.8))
        return live._buffered

    assert asyncio.run(main()) == RATE  # the oldest audio was dropped, the cap held


def test_clear_drops_the_utterance_in_progress():
    async def main():
        rec = Recorder()
        live = session(rec)
        await feed(live, sound(0.6))
        await live.clear()
        await feed(live, quiet(1.0))
        await live.finish()
        return rec

    assert asyncio.run(main()).kinds() == ["started", "cleared"]


def test_close_cancels_pending_decodes_and_reports_nothing_more():
    async def main():
        rec = Recorder()
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def final(samples):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        live = session(rec, final=final)
        await feed(live, np.concatenate([sound(0.5), quiet(0.8)]))
        await asyncio.wait_for(started.wait(), 5)
        await live.close()
        return rec, cancelled.is_set(), live.pending_finals

    rec, cancelled, pending = asyncio.run(main())
    assert cancelled and pending == 0
    assert rec.kinds() == ["started", "stopped", "committed"]


def test_more_pending_finals_than_the_cap_wait_and_none_is_lost():
    """Audio faster than real time (a file streamed as fast as it reads): over the cap
    of utterances decoding at once, the session stops reading (the socket slows the
    client) instead of failing the newest utterance, as it did."""

    async def main():
        rec = Recorder()
        gate = asyncio.Event()
        running, most = 0, 0

        async def final(samples):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await gate.wait()
            running -= 1
            return transcription(samples)

        live = session(rec, final=final, limits=SessionLimits(max_pending_finals=1))
        audio = np.concatenate([sound(0.4), quiet(0.8)] * 3)
        feeding = asyncio.create_task(feed(live, audio))
        await asyncio.sleep(0.2)
        assert not feeding.done()  # the second commit waits for the first decode
        gate.set()
        await feeding
        await live.finish()
        return rec, most

    rec, most = asyncio.run(main())
    assert most == 1
    assert not [e for e in rec.events if e.kind == "failed"]
    assert rec.kinds().count("final") == 3


def test_a_partial_cut_short_to_a_prefix_of_the_last_one_is_not_shown():
    """A partials-only forward that yielded to a final returns a prefix of its text; after
    "one two three" was shown, "one two" would take text back: it is skipped, a longer
    or different hypothesis is shown."""

    async def main():
        rec = Recorder()
        texts = iter(["one two three", "one two", "", "one two three four", "one too"])

        async def partial(samples, item_id):
            return next(texts, "one too")

        live = session(rec, partial=partial, limits=SessionLimits(partial_interval_s=0.3))
        for chunk in np.array_split(np.concatenate([sound(2.4), quiet(0.8)]), 32):
            await live.append(chunk)
            await asyncio.sleep(0.02)
        await live.finish()
        return [e.text for e in rec.events if e.kind == "partial"]

    shown = asyncio.run(main())
    assert shown[:3] == ["one two three", "one two three four", "one too"], shown


def _ingress_live(partial_call):
    """The ingress side of live sessions over one fake model "m" whose partials
    ``partial_call`` answers (no Ray)."""
    from types import SimpleNamespace

    from serve_app.config import RealtimeSettings
    from serve_app.core.types import RecognitionOptions
    from serve_app.online.realtime.ingress_live import IngressLive

    return IngressLive(
        settings=RealtimeSettings(),
        service=SimpleNamespace(  # type: ignore[arg-type]
            route=lambda model: SimpleNamespace(name="m", default_options=RecognitionOptions())
        ),
        admission={},
        partial_calls={"m": partial_call},
        request_timeout_s=30.0,
    )


def test_a_partial_that_repeats_a_phrase_is_skipped_not_shown():
    """The re-decoded partial of a prefix cut mid-sentence: Whisper tiny.en once said the
    utterance twice ("... team tomorrow please call the customer service team tomorrow").
    ``IngressLive.decode_partial`` skips such a partial (None: nothing is shown, and
    FunASR's append-only online text does not get the repeat); others pass as they are."""
    from serve_app.core.types import RecognitionOptions, SegmentTranscript

    said: list[str] = []

    async def partial_call(job):
        return SegmentTranscript(text=said[-1])

    live = _ingress_live(partial_call)

    def decode(text: str) -> str | None:
        said.append(text)
        samples = np.zeros(16000, np.float32)
        return asyncio.run(
            live.decode_partial(samples, model="m", options=RecognitionOptions(), key="s/1")
        )

    assert (
        decode("Please call the customer service team") == "Please call the customer service team"
    )
    phrase = "Please call the customer service team tomorrow"
    doubled = f"{phrase} {phrase.lower()}"
    assert decode(doubled) is None


def test_each_partial_carries_the_previous_partials_tokens_until_the_utterance_ends():
    """``IngressLive.decode_partial`` sends an utterance's last partial tokens as the next
    partial item's draft (Moonshine checks them in one decoder pass), per utterance, and
    ``end_partial`` forgets them (nothing kept per ended utterance). Finals take none."""
    from serve_app.core.types import RecognitionOptions, SegmentTranscript

    drafts: list[tuple[str, tuple[int, ...]]] = []

    async def partial_call(job):
        drafts.append((job.coalesce_key, job.draft_tokens))
        heard = len(job.audio) // 8000  # one token per half second heard
        return SegmentTranscript(text="word " * heard, tokens=tuple(range(10, 10 + heard)))

    live = _ingress_live(partial_call)
    options = RecognitionOptions()

    async def main() -> None:
        for seconds, key in [(1, "s/1"), (2, "s/1"), (1, "s/2"), (3, "s/1")]:
            samples = np.zeros(16000 * seconds, np.float32)
            await live.decode_partial(samples, model="m", options=options, key=key)
        live.end_partial("s/1")
        await live.decode_partial(
            np.zeros(16000, np.float32), model="m", options=options, key="s/1"
        )

    asyncio.run(main())
    assert drafts == [
        ("s/1", ()),
        ("s/1", (10, 11)),
        ("s/2", ()),
        ("s/1", (10, 11, 12, 13)),
        ("s/1", ()),  # a new utterance with the same key starts without one
    ]
    live.end_partial("s/1")
    live.end_partial("s/2")
    assert live.drafts == {}


def _final_log(rec: Recorder, log: list, delay_s: float = 0.0):
    """A final decoder that logs (samples, events reported when it started, cancelled?)."""

    async def final(samples):
        entry = {"samples": len(samples), "seen": rec.kinds(), "cancelled": False}
        log.append(entry)
        try:
            await asyncio.sleep(delay_s)
        except asyncio.CancelledError:
            entry["cancelled"] = rec.kinds()  # what was reported when it was cancelled
            raise
        return transcription(samples)

    return final


def test_the_final_decode_starts_at_the_end_pad_of_silence_before_the_turn_ends():
    async def main(early_final_ms):
        rec, log = Recorder(), []
        live = session(
            rec,
            final=_final_log(rec, log, delay_s=0.05),
            limits=SessionLimits(early_final_ms=early_final_ms),
        )
        await feed(live, np.concatenate([quiet(0.5), sound(1.0), quiet(1.0)]), pace_s=0.0)
        await live.finish()
        return rec, log

    rec, log = asyncio.run(main(END_PAD_MS))
    assert rec.kinds() == ["started", "stopped", "committed", "final"]
    # One decode, begun before the turn was known to end (0.3 s of silence early), and it
    # is the final: the committed audio, no second decode.
    assert len(log) == 1 and "stopped" not in log[0]["seen"]
    final = rec.events[-1]
    assert int(final.text) == log[0]["samples"] == (final.end_ms - final.at_ms) * 16
    late_rec, late = asyncio.run(main(0))  # off: decoded once the turn has ended
    assert len(late) == 1 and "committed" in late[0]["seen"]
    assert late_rec.events[-1].text == final.text  # the same audio either way


def test_speech_resuming_after_a_short_pause_cancels_the_early_decode():
    async def main():
        rec, log = Recorder(), []
        live = session(rec, final=_final_log(rec, log, delay_s=1.0))
        # A 0.35 s pause: past the end pad (a decode starts), short of the 0.5 s turn end.
        audio = np.concatenate([sound(0.8), quiet(0.35), sound(0.8), quiet(1.0)])
        await feed(live, audio, chunk_s=0.05, pace_s=0.0)
        await live.finish()
        return rec, log

    rec, log = asyncio.run(main())
    assert rec.kinds() == ["started", "stopped", "committed", "final"]
    # The pause's guess was dropped as speech resumed, not left running to the turn's end.
    assert log[0]["cancelled"] == ["started"] and log[1]["cancelled"] is False
    final = rec.events[-1]
    assert int(final.text) == log[1]["samples"] > log[0]["samples"] + 0.8 * RATE
    assert int(final.text) == (final.end_ms - final.at_ms) * 16  # the whole turn


def test_a_settings_change_drops_an_early_decode_and_close_cancels_it():
    async def main():
        rec, log = Recorder(), []
        live = session(rec, final=_final_log(rec, log, delay_s=1.0))
        await feed(live, np.concatenate([sound(0.8), quiet(0.3)]), pace_s=0.0)
        assert len(log) == 1 and live.busy
        live.options_changed()
        await asyncio.sleep(0)
        assert log[0]["cancelled"] is not False
        await feed(live, quiet(0.1), pace_s=0.0)  # still silence: decoded again, new settings
        assert len(log) == 2
        await live.close()
        return log

    log = asyncio.run(main())
    assert all(e["cancelled"] is not False for e in log)


def test_the_config_s_realtime_section_sets_each_session_s_limits():
    from serve_app.config import RealtimeSettings
    from serve_app.online.realtime.backend import session_limits

    settings = RealtimeSettings(early_final_ms=300, partial_interval_s=0.5, max_pending_finals=3)
    assert session_limits(settings) == SessionLimits(
        partial_interval_s=0.5, early_final_ms=300, max_pending_finals=3
    )
    assert session_limits(RealtimeSettings()).early_final_ms == END_PAD_MS  # on by default
