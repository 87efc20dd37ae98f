import json

import pytest

from serve_app.core.errors import RecognitionError
from serve_app.core.transcript import (
    Transcription,
    TranscriptSegment,
    join_texts,
    render,
    stitch_segments,
    to_srt,
    to_vtt,
)
from serve_app.core.types import SegmentTranscript, TextSpan, WordTiming

TR = Transcription(
    text="hello world. second part",
    segments=(
        TranscriptSegment(0, 0.0, 1.5, "hello world."),
        TranscriptSegment(1, 3661.25, 3662.5, "second part"),
    ),
    duration_s=3663.0,
    model="m",
    language="en",
)


def test_join_spaces_words_not_cjk():
    assert join_texts(["hello", " world "]) == "hello world"
    assert join_texts(["你好", "世界"]) == "你好世界"
    assert join_texts(["ok", "", "你好"]) == "ok 你好"


def test_srt_and_vtt_clock():
    srt = to_srt(TR)
    assert "1\n00:00:00,000 --> 00:00:01,500\nhello world." in srt
    assert "2\n01:01:01,250 --> 01:01:02,500\nsecond part" in srt
    vtt = to_vtt(TR)
    assert vtt.startswith("WEBVTT\n\n")
    assert "01:01:01.250 --> 01:01:02.500" in vtt


def test_render_formats():
    body, media = render(TR, "json")
    usage = {"type": "duration", "seconds": 3663.0}  # OpenAI's duration-billed usage
    assert json.loads(body) == {"text": TR.text, "usage": usage} and media == "application/json"
    body, _ = render(TR, "verbose_json")
    parsed = json.loads(body)
    assert parsed["duration"] == 3663.0 and parsed["usage"] == usage
    assert [s["start"] for s in parsed["segments"]] == [0.0, 3661.25]
    assert render(TR, "text")[0] == TR.text


def test_stitch_expands_timed_spans_into_segments():
    packed = SegmentTranscript(
        text="one. two.",
        spans=(TextSpan(0.5, 2.0, "one."), TextSpan(2.0, 99.0, "two."), TextSpan(3, 4, " ")),
        words=(WordTiming(0.6, 0.9, "one"), WordTiming(2.1, 2.4, "two")),
    )
    plain = SegmentTranscript(text="three.")
    text, segs, _ = stitch_segments([(10_000, 15_000), (20_000, 21_000)], [packed, plain])
    assert text == "one. two. three."
    assert [(s.id, s.start_s, s.end_s, s.text) for s in segs] == [
        (0, 10.5, 12.0, "one."),
        (1, 12.0, 15.0, "two."),  # clamped to the item's end; the empty span dropped
        (2, 20.0, 21.0, "three."),
    ]
    assert [w.word for w in segs[0].words] == ["one"] and segs[1].words[0].start_s == 12.1


def test_stitch_keeps_every_word_even_one_aligned_outside_its_span():
    # Word times come from the cross-attention alignment, span times from timestamp tokens
    # (or the pauses they were moved to): a segment's first word may start just before it.
    item = SegmentTranscript(
        text="hello world. the fox.",
        spans=(TextSpan(1.0, 2.0, "hello world."), TextSpan(3.0, 4.0, "the fox.")),
        words=(
            WordTiming(0.7, 1.1, "hello"),
            WordTiming(1.2, 1.8, "world."),
            WordTiming(2.6, 2.8, "the"),
            WordTiming(3.1, 3.6, "fox."),
            WordTiming(4.1, 4.3, "um"),
        ),
    )
    _, segs, _ = stitch_segments([(0, 5000)], [item])
    assert [[w.word for w in s.words] for s in segs] == [["hello", "world."], ["the", "fox.", "um"]]


def test_what_whisper_says_for_music_is_no_segment():
    # Hold music between two sentences came back as two segments of "." (2026-12-07).
    music = SegmentTranscript(text=" . ♪", spans=(TextSpan(0.9, 1.7, "."), TextSpan(2, 3, "♪")))
    said = SegmentTranscript(text="Hello world.", spans=(TextSpan(0.1, 1.2, "Hello world."),))
    text, segs, _ = stitch_segments([(0, 3000), (4000, 6000)], [music, said])
    assert text == "Hello world."
    assert [s.text for s in segs if s.text] == ["Hello world."]
    text, _, _ = stitch_segments([(0, 3000)], [SegmentTranscript(text="...")])
    assert text == ""


def test_stitch_raises_the_first_failure():
    with pytest.raises(RecognitionError):
        stitch_segments([(0, 1), (1, 2)], [SegmentTranscript("a"), RecognitionError("x")])
