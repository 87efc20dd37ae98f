"""Transcript fidelity: coverage checks, re-decode rounds and splicing (fake backends).

The fake "speech" is a sequence of tone bursts, one per sentence, each at its own pitch;
the fake recognizer hears which bursts an item holds (by energy and pitch) and returns one
timed span per burst, like Whisper with timestamp tokens. Its failure modes are Whisper's:
it stops before the item's last sentence, skips a middle one, or loops.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from serve_app.batch.stages import DECODED_SCHEMA, recognize_rows, table_from_rows
from serve_app.config import AudioSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.coverage import (
    GAP,
    REPETITION,
    RETIME_STEPS,
    RETIME_WHOLE,
    TAIL,
    check_item,
    retime_spans,
    speech_frames,
    speech_islands,
)
from serve_app.core.redecode import ItemAudio, Redecoder, retime_only
from serve_app.core.segmentation import SpeechSegment, pack_pieces
from serve_app.core.text import compression_ratio, has_repetition_loop
from serve_app.core.types import RecognitionOptions, SegmentTranscript, TextSpan
from serve_app.online.service import ModelRoute, TranscriptionService

SR = 16_000


def _sentence_words(i: int) -> str:
    return f"s{i}a s{i}b s{i}c s{i}d"


def _freq(i: int) -> float:
    return 200.0 + 100.0 * i


def _burst(i: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * _freq(i) * t)).astype(np.float32)


def _speech(durations_s, pauses_s, lead_s=0.2):
    """Bursts 0..n-1 with the given pauses; returns samples and each burst's (start, end) ms."""
    rng = np.random.default_rng(0)
    parts, spans, t_ms = [np.zeros(int(lead_s * SR), np.float32)], [], int(lead_s * 1000)
    for i, dur in enumerate(durations_s):
        parts.append(_burst(i, dur))
        spans.append((t_ms, t_ms + int(dur * 1000)))
        t_ms += int(dur * 1000)
        pause = pauses_s[i] if i < len(pauses_s) else 0.3
        parts.append(np.zeros(int(pause * SR), np.float32))
        t_ms += int(pause * 1000)
    samples = np.concatenate(parts)
    samples += (1e-4 * rng.standard_normal(len(samples))).astype(np.float32)  # room noise
    return samples.astype(np.float32), spans


def _hear(audio: np.ndarray) -> list[tuple[float, float, int]]:
    """(start_s, end_s, sentence index) of each burst in ``audio``."""
    mask = speech_frames(audio)
    out = []
    for start_ms, end_ms in speech_islands(mask):
        if end_ms - start_ms < 300:
            continue
        chunk = audio[start_ms * 16 : end_ms * 16]
        crossings = np.count_nonzero(np.diff(np.signbit(chunk)))
        freq = crossings / 2 / (len(chunk) / SR)
        out.append((start_ms / 1000, end_ms / 1000, round((freq - 200.0) / 100.0)))
    return out


class FakeWhisper:
    """Hears bursts; ``mode``: ok | stop_early | skip_middle | loop | fixed_steps.

    Failures only happen on items holding at least ``fail_from`` sentences, as Whisper's
    do on long packed items: a re-decoded stretch (one or two sentences) comes back right.
    """

    def __init__(self, mode: str, fail_from: int = 3) -> None:
        self.mode = mode
        self.fail_from = fail_from
        self.calls: list[float] = []  # durations of every item recognised

    def __call__(self, audio: np.ndarray) -> SegmentTranscript:
        self.calls.append(len(audio) / SR)
        heard = _hear(audio)
        failing = len(heard) >= self.fail_from
        if failing and self.mode == "stop_early":
            heard = heard[:-1]
        if failing and self.mode == "skip_middle":
            heard = heard[:1] + heard[2:]
        if failing and self.mode == "loop":
            text = " ".join(["the same thing"] * 12)
            return SegmentTranscript(text=text, spans=(TextSpan(0.0, len(audio) / SR, text),))
        spans = tuple(TextSpan(a, b, _sentence_words(i)) for a, b, i in heard)
        if failing and self.mode == "fixed_steps":
            spans = tuple(TextSpan(2.0 * k, 2.0 * (k + 1), s.text) for k, s in enumerate(spans))
        return SegmentTranscript(text=" ".join(s.text for s in spans), spans=spans)


def _words_of(n: int) -> str:
    return " ".join(_sentence_words(i) for i in range(n))


def _run_rounds(fake, samples, vad_ms, max_rounds=2):
    first = fake(samples)
    redecoder = Redecoder([ItemAudio(samples, vad_ms)], [first], max_rounds=max_rounds)
    rounds = 0
    while jobs := redecoder.pending():
        rounds += 1
        redecoder.accept([fake(job.audio) for job in jobs])
    (result,) = redecoder.results()
    return first, result, redecoder, rounds


# -- the check --------------------------------------------------------------------------


def test_complete_decode_needs_nothing():
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8], [0.8, 1.2, 0.8])
    result = FakeWhisper("ok")(samples)
    assert result.text == _words_of(4)
    check = check_item(samples, result, spans)
    assert check.stretches == () and not check.replace and check.retimed is None


def test_early_stop_leaves_the_tail_as_a_stretch():
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8], [0.8, 1.2, 0.8])
    result = FakeWhisper("stop_early")(samples)
    assert result.text == _words_of(3)  # the last sentence is lost
    check = check_item(samples, result, spans)
    (stretch,) = check.stretches
    assert stretch.reason == TAIL
    last_start, last_end = spans[-1]
    assert stretch.start_ms <= last_start and stretch.end_ms >= last_end - 20
    assert stretch.start_ms >= spans[-2][1]  # not into the sentence before


def test_skipped_sentence_is_a_gap_even_under_one_vad_span():
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8], [1.2, 1.2, 1.2])
    result = FakeWhisper("skip_middle")(samples)
    one_span = [(spans[0][0], spans[-1][1])]  # FSMN-VAD kept the whole file as one span
    (stretch,) = check_item(samples, result, one_span).stretches
    assert stretch.reason == GAP
    assert stretch.start_ms <= spans[1][0] and stretch.end_ms >= spans[1][1] - 20


def test_short_uncovered_noise_is_ignored():
    samples, spans = _speech([1.5, 0.4, 1.5], [0.8, 0.8])  # a 0.4 s click between
    heard = [(a, b, i) for a, b, i in _hear(samples) if b - a > 1.0]
    result = SegmentTranscript(
        text="x", spans=tuple(TextSpan(a, b, _sentence_words(i)) for a, b, i in heard)
    )
    assert check_item(samples, result, spans).stretches == ()


def test_a_short_sentence_alone_after_a_pause_is_not_noise():
    # "Hello world" at the end of an 8 kHz GSM call: 0.6 s pass the energy test. A whole
    # island no span comes near needs 0.5 s; a fragment next to a span still needs 0.7 s.
    samples, spans = _speech([1.5, 2.0, 0.6], [0.8, 1.0])
    heard = _hear(samples)
    result = SegmentTranscript(
        text=_words_of(2),
        spans=tuple(TextSpan(a, b, _sentence_words(i)) for a, b, i in heard[:2]),
    )
    (tail,) = check_item(samples, result, spans).stretches
    assert tail.reason == TAIL and tail.start_ms <= spans[2][0] and tail.end_ms >= spans[2][1] - 20


def test_loop_is_degenerate_and_split_at_the_vad_segments():
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8], [0.8, 1.2, 0.8])
    result = FakeWhisper("loop")(samples)
    assert has_repetition_loop(result.text) and compression_ratio(result.text) > 2.4
    check = check_item(samples, result, spans)
    assert check.replace and check.degenerate in (REPETITION, "compression_ratio")
    assert [(s.start_ms, s.end_ms) for s in check.stretches] == spans


def test_empty_decode_of_speech_is_split_not_repeated_whole():
    samples, _ = _speech([2.5, 2.5], [0.8])
    check = check_item(samples, SegmentTranscript(text=""), None)
    assert check.replace and len(check.stretches) == 2
    cut = check.stretches[0].end_ms
    assert 2700 <= cut <= 3500  # in the pause between the two bursts


def test_fixed_step_timestamps_are_retimed_from_the_speech():
    samples, spans = _speech([1.5, 2.6, 1.1, 1.8], [0.8, 1.2, 0.8])
    result = FakeWhisper("fixed_steps")(samples)
    check = check_item(samples, result, spans)
    assert check.retimed == RETIME_STEPS and check.stretches == () and not check.replace
    assert [s.text for s in check.spans] == [_sentence_words(i) for i in range(4)]
    for span, (a, b) in zip(check.spans, spans, strict=True):
        assert abs(span.start_s * 1000 - a) <= 100 and abs(span.end_s * 1000 - b) <= 100
    # One VAD span over everything: the speech islands give the times.
    whole = [(spans[0][0], spans[-1][1])]
    retimed, why = retime_only(samples, result, whole)
    assert why == RETIME_STEPS
    for span, (a, b) in zip(retimed.spans, spans, strict=True):
        assert abs(span.start_s * 1000 - a) <= 100 and abs(span.end_s * 1000 - b) <= 100
    _, final, redecoder, rounds = _run_rounds(FakeWhisper("fixed_steps"), samples, whole)
    assert rounds == 0 and redecoder.retimed[RETIME_STEPS] == 1
    assert final.text == _words_of(4) and final.spans == check.spans


def _stepped_stop(audio: np.ndarray) -> SegmentTranscript:
    """What tiny.en (int8, on a Zen 3 CPU) returned for four espeak sentences 3.7 s apart
    in one item: three spans in whole-second steps (0/7/15/22 s), the fourth sentence
    missing. Shorter items are heard right."""
    heard = _hear(audio)
    if len(heard) < 4:
        return FakeWhisper("ok")(audio)
    steps = [(0.0, 7.0), (7.0, 15.0), (15.0, 22.0)]
    spans = tuple(TextSpan(a, b, _sentence_words(i)) for i, (a, b) in enumerate(steps))
    return SegmentTranscript(text=" ".join(s.text for s in spans), spans=spans)


def test_a_stepped_decode_that_stopped_early_gets_its_tail_decoded_again():
    samples, spans = _speech([3.2, 3.7, 3.9, 3.9], [3.7, 3.7, 3.7])
    assert spans[3][0] > 22_000  # the lost sentence starts after the last timestamp
    check = check_item(samples, _stepped_stop(samples), spans)
    assert check.retimed == RETIME_WHOLE and not check.replace
    (tail,) = check.stretches
    assert tail.reason == TAIL
    assert tail.start_ms <= spans[3][0] and tail.end_ms >= spans[3][1]
    assert tail.start_ms > spans[2][1]  # nothing already decoded is decoded again
    # The three spans are re-timed onto the three segments they transcribe.
    for span, (a, b) in zip(check.spans, spans[:3], strict=True):
        assert abs(span.start_s * 1000 - a) <= 100 and abs(span.end_s * 1000 - b) <= 100
    _, final, redecoder, rounds = _run_rounds(_stepped_stop, samples, spans)
    assert final.text == _words_of(4) and rounds == 1
    assert redecoder.redecodes[TAIL] == 1

    # As many stepped spans as segments: only re-timed (nothing says what is lost).
    assert check_item(samples, FakeWhisper("fixed_steps")(samples), spans).stretches == ()

    # Stepped times that run early with the text whole (two sentences in the last span):
    # the last segment is decoded again, and its text, a repeat, is dropped.
    def compressed(audio: np.ndarray) -> SegmentTranscript:
        if len(_hear(audio)) < 4:
            return FakeWhisper("ok")(audio)
        last = _sentence_words(2) + " " + _sentence_words(3)
        steps = (
            (0.0, 5.0, _sentence_words(0)),
            (5.0, 10.0, _sentence_words(1)),
            (10.0, 15.0, last),
        )
        return SegmentTranscript(text=_words_of(4), spans=tuple(TextSpan(*t) for t in steps))

    _, final, redecoder, _ = _run_rounds(compressed, samples, spans)
    assert redecoder.redecodes[TAIL] == 1 and final.text == _words_of(4)


def _whole_second_stop(audio: np.ndarray) -> SegmentTranscript:
    """What tiny.en (int8, Intel, 2026-12-07) returned for a packed 28 s item of read speech
    in 20 dB noise: whole-second times, each start its sentence's floored, the last of the
    eight sentences never decoded and the last span ending where it starts. Shorter items
    (a re-decoded stretch) are heard right."""
    heard = _hear(audio)
    if len(heard) < 5:
        return FakeWhisper("ok")(audio)
    starts = [float(int(a)) for a, _, _ in heard]
    spans = tuple(
        TextSpan(starts[k], starts[k + 1], _sentence_words(i))
        for k, (_, _, i) in enumerate(heard[:-1])
    )
    return SegmentTranscript(text=" ".join(s.text for s in spans), spans=spans)


def test_whole_second_times_stay_on_their_speech_and_what_was_not_decoded_is_again():
    # The sentences of that item (s): 0.29-1.44, 5.15-8.04, 8.64-11.62, 12.01-13.15, ...
    samples, spans = _speech(
        [1.15, 2.9, 3.0, 1.15, 2.9, 3.0, 1.15, 2.9], [3.7, 0.6, 0.4, 2.35, 0.6, 1.3, 0.7], 0.29
    )
    # The VAD joined sentences 2 and 3 (a 0.4 s pause): 7 segments for 8 sentences, and
    # the decode's 7 spans. Matching spans to segments by count put every text from the
    # 4th on over the sentence after its own, and left nothing to decode again.
    vad = spans[:2] + [(spans[2][0], spans[3][1])] + spans[4:]
    result = _whole_second_stop(samples)
    assert len(result.spans) == len(vad) == 7
    check = check_item(samples, result, vad)
    assert check.retimed == RETIME_WHOLE and not check.replace
    said = {_sentence_words(i): spans[i] for i in range(8)}
    for span in check.spans:
        a, b = said[span.text]
        assert a - 100 <= span.start_s * 1000 and span.end_s * 1000 <= b + 100, span
    (tail,) = check.stretches
    assert tail.reason == TAIL and tail.start_ms <= spans[7][0] and tail.end_ms >= spans[7][1] - 20
    assert tail.start_ms >= spans[6][1]  # nothing already decoded is decoded again
    _, final, redecoder, rounds = _run_rounds(_whole_second_stop, samples, vad)
    assert final.text == _words_of(8) and rounds == 1 and redecoder.redecodes[TAIL] == 1


def test_a_last_span_ending_where_an_undecoded_sentence_starts_leaves_it_a_tail():
    samples, spans = _speech([2.0, 2.5, 1.0], [0.8, 0.6])
    heard = [TextSpan(a / 1000, b / 1000, _sentence_words(i)) for i, (a, b) in enumerate(spans)]
    # Fine times, the third sentence (1 s) never decoded: the second span's end is where
    # the third starts, 0.1 s into it (seen on a 28 s item, last end 27.0 s, the undecoded
    # "hello world" at 26.92-28.29 s). With 0.3 s of slack that left 0.6 s uncovered.
    stopped = (heard[0], TextSpan(heard[1].start_s, spans[2][0] / 1000 + 0.1, heard[1].text))
    result = SegmentTranscript(text=_words_of(2), spans=stopped)
    (tail,) = check_item(samples, result, spans).stretches
    assert tail.reason == TAIL and tail.start_ms <= spans[2][0] and tail.end_ms >= spans[2][1] - 20
    # A complete decode whose last span ends at the speech's end leaves nothing.
    done = SegmentTranscript(text=_words_of(3), spans=tuple(heard))
    assert check_item(samples, done, spans).stretches == ()


def test_span_times_running_on_through_a_long_pause_end_at_the_speech():
    """Two spans of whole seconds (too few to tell they are whole seconds), as tiny.en
    gave for two countings 4.7 s apart: the first ran on to 7.0 s over the pause, so its
    subtitle cue, and its speaker's turn, covered 4 s of silence. Measured 2026-12-07."""
    samples, spans = _speech([2.6, 2.6], [4.7], lead_s=0.4)
    said = ("one two three four five", "six seven eight nine ten")
    end_s = len(samples) / SR
    item = SegmentTranscript(
        text=" ".join(said), spans=(TextSpan(0.0, 7.0, said[0]), TextSpan(7.0, end_s, said[1]))
    )
    speech_ms = [(a - 100, b + 100) for a, b in spans]
    redecoder = Redecoder([ItemAudio(samples, tuple(speech_ms))], [item])
    assert redecoder.pending() == []  # nothing to decode again: the request's answer is
    (answer,) = redecoder.results()  # the item with its spans trimmed
    for out in (
        check_item(samples, item, speech_ms).spans,
        retime_only(samples, item, speech_ms)[0].spans,
        answer.spans,
    ):
        assert [s.text for s in out] == list(said)
        (a, b), (c, _) = spans
        assert out[0].start_s * 1000 <= a and abs(out[0].end_s * 1000 - b) <= 300
        assert c - 1000 <= out[1].start_s * 1000 <= c and out[1].end_s <= end_s
    # Fine times with a short pause after the speech are left as they are.
    close = SegmentTranscript(text=said[0], spans=(TextSpan(0.3, 3.4, said[0]),))
    assert check_item(samples, close, speech_ms[:1]).spans == close.spans


def test_proportional_retiming_keeps_order_and_snaps_to_pauses():
    samples, spans = _speech([1.5, 2.6, 1.1, 1.8], [0.8, 1.2, 0.8])
    mask = speech_frames(samples, spans)
    three = (TextSpan(0, 2, "a" * 10), TextSpan(2, 4, "b" * 17), TextSpan(4, 6, "c" * 19))
    out = retime_spans(three, mask)
    assert [s.text for s in out] == [s.text for s in three]
    assert all(a.end_s <= b.start_s for a, b in zip(out, out[1:]))
    assert abs(out[0].start_s * 1000 - spans[0][0]) <= 60
    assert abs(out[-1].end_s * 1000 - spans[-1][1]) <= 60
    # Every boundary lies in a pause between two sentences.
    pauses = [(spans[k][1] - 40, spans[k + 1][0] + 40) for k in range(3)]
    for a, b in zip(out, out[1:]):
        assert any(lo <= a.end_s * 1000 <= b.start_s * 1000 <= hi for lo, hi in pauses)


@pytest.mark.parametrize("mode", ["stop_early", "skip_middle", "loop"])
def test_redecode_recovers_every_sentence(mode):
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8, 1.6], [0.8, 1.2, 0.8, 2.0])
    first, result, redecoder, rounds = _run_rounds(FakeWhisper(mode), samples, spans)
    assert first.text != _words_of(5)  # without the re-decode, speech is lost
    assert result.text == _words_of(5)
    assert 1 <= rounds <= 2 and sum(redecoder.redecodes.values()) >= 1
    starts = [s.start_s for s in result.spans]
    assert starts == sorted(starts)
    for span, (a, b) in zip(result.spans, spans, strict=True):  # in the item's time
        assert a / 1000 - 0.35 <= span.start_s <= span.end_s <= b / 1000 + 0.35


def test_seeking_on_takes_a_second_round_and_never_more():
    # Fails on any item of >= 3 sentences: the first tail stretch (two sentences, after a
    # "skip" of one in the middle of the item) is decoded in round 1, and what round 1
    # misses in it is decoded in round 2, as sequential seeking would.
    samples, spans = _speech([1.5, 1.7, 1.3, 1.6, 1.4], [0.8, 0.9, 0.7, 1.0])
    fake = FakeWhisper("stop_early", fail_from=2)
    whole = [(spans[0][0], spans[-1][1])]  # one VAD span
    first, result, _, rounds = _run_rounds(fake, samples, whole)
    assert first.text == _words_of(4)
    assert rounds == 1 and result.text == _words_of(5)

    always = FakeWhisper("loop", fail_from=1)  # loops on everything, however short
    _, result, redecoder, rounds = _run_rounds(always, samples, whole)
    assert rounds == 2 and redecoder.rounds_done == 2  # bounded, then accepted
    assert len(always.calls) == 1 + 2 + 4  # the item, its halves, their halves
    assert "the same thing" in result.text


def test_an_empty_redecode_is_accepted_as_silence():
    samples, spans = _speech([1.5, 1.5, 1.5], [0.8, 0.8])
    calls = []

    def recognize(audio):
        calls.append(len(audio))
        if len(calls) == 1:
            return FakeWhisper("stop_early")(audio)
        return SegmentTranscript(text="")

    _, result, _, rounds = _run_rounds(recognize, samples, spans)
    assert result.text == _words_of(2) and rounds <= 2 and len(calls) <= 3


def test_failed_redecode_fails_the_item():
    samples, spans = _speech([1.5, 1.5, 1.5], [0.8, 0.8])
    redecoder = Redecoder([ItemAudio(samples, spans)], [FakeWhisper("stop_early")(samples)])
    jobs = redecoder.pending()
    boom = RuntimeError("replica died")
    redecoder.accept([boom for _ in jobs])
    assert redecoder.results() == [boom]


def test_pack_pieces_keeps_member_segments():
    segs = [SpeechSegment(0, 4000), SpeechSegment(9000, 14_000), SpeechSegment(31_000, 40_000)]
    pieces = pack_pieces(segs, max_piece_ms=30_000)
    assert [p.segment for p in pieces] == [SpeechSegment(0, 14_000), SpeechSegment(31_000, 40_000)]
    assert pieces[0].members == tuple(segs[:2])
    assert pieces[1].members_relative_ms() == ((0, 9000),)


# -- both callers -------------------------------------------------------------------------


def _service(fake: FakeWhisper, samples, spans, *, rounds: int = 2, seen=None):
    async def segment(_samples):
        return [SpeechSegment(a, b) for a, b in spans]

    async def recognize(job):
        if seen is not None:
            seen.append(job)
        await asyncio.sleep(0)
        return fake(job.audio)

    return TranscriptionService(
        segment=segment,
        routes={"w": ModelRoute("w", recognize, pack_segments_ms=30_000, redecode_rounds=rounds)},
        default_model="w",
        limits=AudioSettings(),
    )


@pytest.mark.parametrize("mode", ["stop_early", "skip_middle", "loop"])
def test_service_redecodes_what_the_item_missed(mode):
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8, 1.6], [0.8, 1.2, 0.8, 2.0])
    audio = DecodedAudio(samples, SR, "wav")
    before = asyncio.run(
        _service(FakeWhisper(mode), samples, spans, rounds=0).transcribe(audio, model=None)
    )
    assert before.text != _words_of(5)
    seen: list = []
    after = asyncio.run(
        _service(FakeWhisper(mode), samples, spans, seen=seen).transcribe(
            audio, model=None, deadline_unix_s=1e12, request_id="r1"
        )
    )
    assert after.text == _words_of(5)
    assert [s.text for s in after.segments] == [_sentence_words(i) for i in range(5)]
    assert all(job.deadline_unix_s == 1e12 and job.request_id == "r1" for job in seen)
    assert len(seen) > 1 and "redecode" in after.timings_s


def test_service_stretches_of_all_items_go_out_together():
    # Two packed items (a 30 s window apart), each stopping early: both tails are
    # requested in the same round, before either returns.
    a, spans_a = _speech([1.5, 1.5, 1.5], [0.8, 0.8])
    gap = np.zeros(31 * SR, np.float32)
    samples = np.concatenate([a, gap, a])
    offset = (len(a) + len(gap)) // 16
    spans = spans_a + [(s + offset, e + offset) for s, e in spans_a]
    in_flight, peak = 0, 0
    fake = FakeWhisper("stop_early")

    async def segment(_samples):
        return [SpeechSegment(s, e) for s, e in spans]

    async def recognize(job):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return fake(job.audio)

    service = TranscriptionService(
        segment=segment,
        routes={"w": ModelRoute("w", recognize, pack_segments_ms=30_000, redecode_rounds=2)},
        default_model="w",
        limits=AudioSettings(),
    )
    tr = asyncio.run(service.transcribe(DecodedAudio(samples, SR, "wav"), model=None))
    assert tr.text == _words_of(3) + " " + _words_of(3)
    assert len(fake.calls) == 4 and peak == 2  # 2 items, then 2 tails concurrently


def test_offline_rows_redecode_in_one_second_batch():
    samples, spans = _speech([1.5, 2.0, 1.5, 1.8], [0.8, 1.2, 0.8])
    fake = FakeWhisper("stop_early")

    class Recognizer:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def transcribe_batch(self, jobs):
            self.batches.append(len(jobs))
            return [fake(job.audio) for job in jobs]

    def row(row_id):
        return {
            "id": row_id,
            "language": None,
            "hotwords": [],
            "duration_s": len(samples) / SR,
            "status": "ok",
            "error": None,
            "speech": [
                {
                    "start_ms": 0,
                    "end_ms": len(samples) // 16,
                    "audio": samples.tobytes(),
                    "vad_ms": [{"start_ms": a, "end_ms": b} for a, b in spans],
                }
            ],
        }

    table = table_from_rows([row("a"), row("b")], DECODED_SCHEMA)
    for rounds, expected in ((0, _words_of(3)), (2, _words_of(4))):
        rec = Recognizer()
        out = recognize_rows(
            table,
            rec,
            model_name="w",
            default_options=RecognitionOptions(),
            redecode_rounds=rounds,
        )
        assert [r["text"] for r in out] == [expected, expected]
        assert rec.batches == ([2] if rounds == 0 else [2, 2])  # both tails in one call
    assert pa.types.is_list(DECODED_SCHEMA.field("speech").type)
