"""API keys: loading from env and file, the Bearer check, and the ingress's 401 (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serve_app.core.errors import PermissionDeniedError, UnauthorizedError
from serve_app.online.auth import (
    KEYS_ENV,
    KEYS_FILE_ENV,
    OPERATOR_KEYS_ENV,
    OPERATOR_KEYS_FILE_ENV,
    ApiKeys,
)
from tests.serve.fake_ingress import fake_ingress


def test_no_keys_means_open() -> None:
    keys = ApiKeys.from_env({})
    assert not keys.enabled
    keys.check("/v1/audio/transcriptions", None)
    keys.check("/v1/models", "Bearer anything")


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-11\nsk-file-1\n\n  sk-file-2  # old one, drop in Dec\n")
    keys = ApiKeys.from_env({KEYS_ENV: " sk-env-1, ,sk-env-2", KEYS_FILE_ENV: str(path)})
    assert len(keys) == 4
    for key in ("sk-env-1", "sk-env-2", "sk-file-1", "sk-file-2"):
        keys.check("/v1/models", f"Bearer {key}")
        assert keys.matches(key)
    assert not keys.matches("# rotated 2026-11")
    assert not keys.matches("")


def test_a_named_but_unusable_key_file_refuses_to_start_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        ApiKeys.from_env({KEYS_FILE_ENV: str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        ApiKeys.from_env({KEYS_FILE_ENV: str(empty)})


def test_key_with_whitespace_is_refused() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        ApiKeys(["sk one"])


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("sk-right", "must be 'Bearer <key>'"),
        ("Basic c2stcmlnaHQ=", "must be 'Bearer <key>'"),
        ("Bearer ", "must be 'Bearer <key>'"),
        ("Bearer sk-wrong", "incorrect API key"),
        ("Bearer sk-righ", "incorrect API key"),  # a prefix
        ("Bearer sk-right2", "incorrect API key"),  # an extension
        ("Bearer SK-RIGHT", "incorrect API key"),
    ],
)
def test_wrong_or_missing_key(authorization: str | None, message: str) -> None:
    keys = ApiKeys(["sk-right"])
    with pytest.raises(UnauthorizedError, match=message):
        keys.check("/v1/audio/transcriptions", authorization)


def test_scheme_is_case_insensitive_and_health_is_open() -> None:
    keys = ApiKeys(["sk-right"])
    keys.check("/v1/models", "bearer sk-right")
    keys.check("/v1/models", "BEARER   sk-right ")
    keys.check("/healthz", None)
    keys.check("/health", "Bearer wrong")
    with pytest.raises(UnauthorizedError):
        keys.check("/v1/stats", None)
    with pytest.raises(UnauthorizedError):
        keys.check("/healthz/../v1/models", None)


def test_tuning_needs_an_operator_key() -> None:
    keys = ApiKeys.from_env({KEYS_ENV: "sk-client", OPERATOR_KEYS_ENV: "sk-op"})
    assert len(keys) == 2
    # The operator key is a key everywhere; the client key is one everywhere but tuning.
    for key in ("sk-client", "sk-op"):
        keys.check("/v1/models", f"Bearer {key}")
        keys.check("/v1/tune", f"Bearer {key}", "GET")
    keys.check("/v1/tune", "Bearer sk-op", "POST")
    with pytest.raises(PermissionDeniedError, match="operator key"):
        keys.check("/v1/tune", "Bearer sk-client", "POST")
    with pytest.raises(UnauthorizedError):
        keys.check("/v1/tune", "Bearer sk-other", "POST")
    # Client keys without an operator key: nobody may tune (it was: any client key).
    with pytest.raises(PermissionDeniedError, match="none is configured"):
        ApiKeys(["sk-client"]).check("/v1/tune", "Bearer sk-client", "post")
    # No key at all: local use, open.
    ApiKeys().check("/v1/tune", None, "POST")


def test_operator_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "operators"
    path.write_text("sk-op-file\n")
    keys = ApiKeys.from_env({OPERATOR_KEYS_FILE_ENV: str(path)})
    keys.check("/v1/tune", "Bearer sk-op-file", "POST")
    with pytest.raises(UnauthorizedError):
        keys.check("/v1/models", None)


def test_non_ascii_key_compares() -> None:
    keys = ApiKeys(["clé-ü"])
    assert keys.matches("clé-ü") and not keys.matches("cle-u")


# -- the ingress's key check, served in-process (no Ray) ---------------------------------


def _client(monkeypatch: pytest.MonkeyPatch, keys: str | None) -> TestClient:
    if keys is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, keys)
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    return TestClient(fake_ingress().http_app())


def test_ingress_answers_401_in_openai_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, "sk-a,sk-b")
    for headers in ({}, {"Authorization": "Bearer sk-c"}):
        response = client.post("/v1/audio/transcriptions", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_api_key"
        assert error["param"] is None
        assert error["message"]


def test_ingress_lets_a_good_key_and_probes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, "sk-a,sk-b")
    good = {"Authorization": "Bearer sk-b"}
    response = client.get("/v1/models", headers=good)
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "m"
    # Unknown routes and wrong methods are protected too: a 401, not a 404 or 405 that
    # maps the API.
    assert client.get("/nope").status_code == 401
    assert client.post("/v1/models").status_code == 401
    assert client.post("/v1/models", headers=good).status_code == 405
    # The pages a browser loads without a key: the UI's files and the API's documentation.
    for path in ("/", "/ui", "/ui/", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.post("/").status_code == 401


def test_ingress_answers_403_to_a_client_key_on_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPERATOR_KEYS_ENV, "sk-op")
    client = _client(monkeypatch, "sk-a")
    body = {"model": "no-such-model", "max_batch_audio_s": 10}
    response = client.post("/v1/tune", json=body, headers={"Authorization": "Bearer sk-a"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "www-authenticate" not in response.headers
    # The operator's key gets through to the route (which, outside Serve, fails next).
    client = TestClient(client.app, raise_server_exceptions=False)
    response = client.post("/v1/tune", json=body, headers={"Authorization": "Bearer sk-op"})
    assert response.status_code not in (401, 403), response.text


def test_ingress_without_keys_is_open(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, None)
    assert client.get("/v1/models").status_code == 200
