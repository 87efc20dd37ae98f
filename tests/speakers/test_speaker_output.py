"""Speakers in the response formats and the form fields that ask for them."""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import FormData

from serve_app.core.errors import InvalidRequestError
from serve_app.core.transcript import Transcription, TranscriptSegment, render
from serve_app.online.forms import parse_form

TR = Transcription(
    text="Hello there. Hi. How can I help?",
    segments=(
        TranscriptSegment(0, 0.0, 1.5, "Hello there.", speaker="agent"),
        TranscriptSegment(1, 1.8, 2.2, "Hi.", speaker="customer"),
        TranscriptSegment(2, 2.5, 4.0, "How can I help?", speaker="agent"),
    ),
    duration_s=4.0,
    model="m",
    speakers={"agent": 3.0, "customer": 0.4},
)
PLAIN = Transcription(
    text="Hello.", segments=(TranscriptSegment(0, 0.0, 1.0, "Hello."),), duration_s=1.0, model="m"
)


def test_srt_prefixes_the_speaker():
    body, _ = render(TR, "srt")
    assert body.split("\n\n")[1] == "2\n00:00:01,800 --> 00:00:02,200\n[customer] Hi."
    assert "[" not in render(PLAIN, "srt")[0]


def test_vtt_uses_voice_tags():
    body, _ = render(TR, "vtt")
    assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n<v agent>Hello there.\n")
    assert "<v customer>Hi." in body
    odd = Transcription("x", (TranscriptSegment(0, 0, 1, "x", speaker="a<b>"),), 1.0, "m")
    assert "<v a&lt;b&gt;>x" in render(odd, "vtt")[0]
    assert "<v" not in render(PLAIN, "vtt")[0]


def test_verbose_json_segments_carry_speaker_and_talk_time():
    body = json.loads(render(TR, "verbose_json")[0])
    assert [s["speaker"] for s in body["segments"]] == ["agent", "customer", "agent"]
    assert body["speakers"] == [
        {"speaker": "agent", "talk_time_s": 3.0},
        {"speaker": "customer", "talk_time_s": 0.4},
    ]
    plain = json.loads(render(PLAIN, "verbose_json")[0])
    assert "speaker" not in plain["segments"][0] and "speakers" not in plain


def test_text_and_json_unchanged_unless_speaker_text_asked():
    assert render(TR, "text")[0] == TR.text
    assert json.loads(render(TR, "json")[0])["text"] == TR.text
    lines = "[agent] Hello there.\n[customer] Hi.\n[agent] How can I help?"
    assert render(TR, "text", speaker_prefixed=True)[0] == lines
    assert json.loads(render(TR, "json", speaker_prefixed=True)[0])["text"] == lines
    assert render(PLAIN, "text", speaker_prefixed=True)[0] == "Hello."


def test_form_fields():
    opts = parse_form(
        FormData(
            [
                ("diarize", "true"),
                ("num_speakers", "2"),
                ("channels", "split"),
                ("speaker_text", "1"),
            ]
        )
    )
    assert (opts.diarize, opts.num_speakers, opts.channels, opts.speaker_text) == (
        True,
        2,
        "split",
        True,
    )
    assert opts.output_fields()["diarize"] is True  # part of the cache key
    default = parse_form(FormData([]))
    assert (default.diarize, default.channels, default.speaker_text) == (None, None, False)
    for bad in (
        [("channels", "stereo")],
        [("diarize", "maybe")],
        [("num_speakers", "0")],
        [("min_speakers", "3"), ("max_speakers", "2")],
    ):
        with pytest.raises(InvalidRequestError):
            parse_form(FormData(bad))
