"""API keys through real HTTP: the official openai client with the right and a wrong key.

A separate small app (FSMN-VAD + the random-weight Paraformer) whose ingress gets its keys
the way a cluster would give them: one in ``ASR_API_KEYS``, one in the file named by
``ASR_API_KEYS_FILE``, through the replica's environment (a Secret on Kubernetes).
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from tests.conftest import deploy, replica_options

pytestmark = pytest.mark.slow

APP_NAME = "asr_auth_test"
ROUTE = "/asr-auth"
ENV_KEY = "sk-test-env-4f9c"
FILE_KEY = "sk-test-file-77a1"
MODEL = "paraformer-tiny-random"


@pytest.fixture(scope="module")
def auth_url(serve_instance, models_dir, random_models_dir, tmp_path_factory):
    from ray import serve

    keys_file = tmp_path_factory.mktemp("keys") / "api_keys"
    keys_file.write_text(f"# test keys\n{FILE_KEY}\n")
    env = {"ASR_API_KEYS": ENV_KEY, "ASR_API_KEYS_FILE": str(keys_file)}
    config = {
        "models_dir": str(models_dir),
        "vad_deployment": replica_options(),
        "ingress": {
            "deployment": replica_options(
                ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
            ),
        },
        "recognizers": [
            {
                "name": MODEL,
                "backend": "funasr",
                "model": str(random_models_dir / "paraformer-tiny"),
                "batch": {"max_batch_items": 4},
                "deployment": replica_options(max_ongoing_requests=8),
            }
        ],
    }
    deploy(config, name=APP_NAME, route_prefix=ROUTE)
    yield serve_instance + ROUTE
    serve.delete(APP_NAME)


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
