"""The result cache over HTTP on the shared app: a repeated upload is answered from the
cache (``x-cache: hit``, the same body) without reaching the recognizer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]
MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> bytes:
    audio = synthesize(SENTENCES[9], tmp_path_factory.mktemp("cache_http"))
    # Noise at the end: bytes no other test (or earlier run of the app) uploaded.
    tail = np.random.default_rng().uniform(-1e-3, 1e-3, 160).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([audio, tail]), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def post(http, data: bytes, **fields):
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", data, "audio/wav")},
        data={"model": MODEL, "response_format": "verbose_json", **fields},
    )
    assert resp.status_code == 200, resp.text
    return resp


def items(http) -> int:
    return http.get("/v1/stats").json()[MODEL]["items"]


def test_second_identical_upload_is_a_hit_with_the_same_body(http, speech):
    first = post(http, speech)
    assert first.headers["x-cache"] == "miss"
    before = items(http)
    second = post(http, speech)
    after = items(http)
    assert second.headers["x-cache"] == "hit"
    assert second.content == first.content
    assert first.json()["text"].strip()
    assert after == before  # the hit never reached the recognizer
    # Another output option is another entry; the off switch neither reads nor writes.
    assert post(http, speech, response_format="json").headers["x-cache"] == "miss"
    assert post(http, speech, response_format="json").headers["x-cache"] == "hit"
    bypass = post(http, speech, cache="false")
    assert bypass.headers["x-cache"] == "bypass"
    assert items(http) > after  # a bypass is recognized again
    assert bypass.json()["text"] == first.json()["text"]
    # An alias of the same model shares the entry.
    assert post(http, speech, model="whisper-1").headers["x-cache"] == "hit"
