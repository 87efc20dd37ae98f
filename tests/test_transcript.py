import json

from serve_app.transcript import (
    Transcription,
    TranscriptSegment,
    join_texts,
    render,
    to_srt,
    to_vtt,
)

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
    assert json.loads(body) == {"text": TR.text} and media == "application/json"
    body, _ = render(TR, "verbose_json")
    parsed = json.loads(body)
    assert parsed["duration"] == 3663.0
    assert [s["start"] for s in parsed["segments"]] == [0.0, 3661.25]
    assert render(TR, "text")[0] == TR.text
