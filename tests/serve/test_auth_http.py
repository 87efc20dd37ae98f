"""API keys through real HTTP: the official openai client with the right and a wrong key.

The keyed app of tests/served_apps.py (``keyed_url``: one key in ``ASR_API_KEYS``, one
in the file named by ``ASR_API_KEYS_FILE``, through the replica's environment).
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from tests.served_apps import ENV_KEY, FILE_KEY, KEYED_MODEL

pytestmark = pytest.mark.slow

MODEL = KEYED_MODEL


@pytest.fixture(scope="module")
def auth_url(keyed_url):
    return keyed_url


@pytest.fixture(scope="module")
def wav() -> bytes:
    t = np.arange(16000) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def _client(url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.parametrize("key", [ENV_KEY, FILE_KEY], ids=["env-key", "file-key"])
def test_openai_client_with_the_right_key(auth_url, wav, key):
    client = _client(auth_url, key)
    result = client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav, "audio/wav"))
    assert isinstance(result.text, str)
    assert MODEL in [m.id for m in client.models.list()]


def test_openai_client_with_a_wrong_key(auth_url, wav):
    client = _client(auth_url, "sk-test-wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav, "audio/wav"))
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_raw_http(auth_url, wav):
    with httpx.Client(base_url=auth_url, timeout=120) as http:
        assert http.get("/healthz").status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": f"Basic {ENV_KEY}"}, {"Authorization": "Bearer x"}):
            r = http.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", wav, "audio/wav")},
                data={"model": MODEL},
                headers=headers,
            )
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] == {
                "message": r.json()["error"]["message"],
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
            assert ENV_KEY not in r.text
        ok = http.get("/v1/models", headers={"Authorization": f"Bearer {ENV_KEY}"})
        assert ok.status_code == 200
