"""The official openai client against our endpoint, every response_format."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
from openai import OpenAI

from tests.reference import assert_wer_near_reference
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory, whisper_reference):
    """(FLAC bytes, reference text, faster-whisper's own transcript of the same audio)."""
    tmp = tmp_path_factory.mktemp("openai")
    texts = SENTENCES[4:6]
    audio = concat_with_pauses([synthesize(t, tmp) for t in texts], pause_s=2.0)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC")
    decoded, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    return buf.getvalue(), " ".join(texts), whisper_reference.transcribe(decoded)


@pytest.fixture(scope="module")
def client(asr_url):
    return OpenAI(base_url=f"{asr_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _create(client, data, **kwargs):
    return client.audio.transcriptions.create(
        model="whisper-1", file=("speech.flac", data, "audio/flac"), **kwargs
    )


def test_json(client, speech_file):
    data, ref, library = speech_file
    result = _create(client, data, response_format="json")
    assert_wer_near_reference([ref], [result.text], [library])
    assert result.usage.type == "duration"
    assert result.usage.seconds == pytest.approx(sf.info(io.BytesIO(data)).duration, abs=0.01)


def test_text(client, speech_file):
    data, ref, library = speech_file
    result = _create(client, data, response_format="text")
    assert isinstance(result, str)
    assert_wer_near_reference([ref], [result], [library])


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles(client, speech_file, fmt):
    data, _, _ = speech_file
    result = _create(client, data, response_format=fmt)
    assert isinstance(result, str)
    assert result.count(" --> ") == 2  # one cue per sentence
    if fmt == "vtt":
        assert result.startswith("WEBVTT")
    else:
        assert result.startswith("1\n00:00:0")


def test_verbose_json_with_segments(client, speech_file):
    data, ref, library = speech_file
    result = _create(
        client, data, response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert result.language == "en"
    assert len(result.segments) == 2
    assert result.segments[0].start < result.segments[0].end <= result.segments[1].start
    assert result.duration > result.segments[1].end - 0.5
    assert_wer_near_reference([ref], [result.text], [library])


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert "whisper-tiny.en" in ids
    assert client.models.retrieve("whisper-tiny.en").id == "whisper-tiny.en"
