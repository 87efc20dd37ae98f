"""The ingress's FastAPI app, served in-process with fake stages (no Ray): OpenAPI and
/docs, routing errors in OpenAI's shape, the checks made before the body is read, a
request all the way through (JSON and Server-Sent Events), and websocket plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from fastapi import APIRouter, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from serve_app.config import CacheSettings
from serve_app.core.errors import OverloadedError
from serve_app.core.transcript import RESPONSE_FORMATS
from serve_app.online.auth import KEYS_ENV, KEYS_FILE_ENV
from serve_app.online.forms import TranscriptionForm
from serve_app.online.http_errors import OpenAIErrorRoute
from serve_app.online.transcription import MULTIPART_OVERHEAD_BYTES
from tests.serve.fake_ingress import MODEL, asgi_post, fake_ingress, wav, working_ingress

AUDIO = "/v1/audio/transcriptions"


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)


def _assert_openai_error(body: dict, *, code: str, param: str | None) -> None:
    assert body["error"] == {
        "message": body["error"]["message"],
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }
    assert body["error"]["message"] and body["request_id"]


# -- OpenAPI and /docs --------------------------------------------------------------------


def test_openapi_documents_the_audio_routes_and_their_form_fields():
    spec = TestClient(fake_ingress().http_app()).get("/openapi.json").json()
    for path in (AUDIO, "/v1/audio/translations"):
        operation = spec["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        fields = set(schema["properties"])
        assert {"file", "model", "language", "prompt", "response_format"} <= fields
        assert {"timestamp_granularities[]", "stream", "hotwords", "diarize"} <= fields
        assert {"channels", "num_speakers", "min_speakers", "max_speakers", "cache"} <= fields
        # Every field the parser reads, and nothing else.
        aliases = {f.alias or name for name, f in TranscriptionForm.model_fields.items()}
        assert fields == {"file"} | aliases
        assert schema["required"] == ["file"]
        assert schema["properties"]["file"]["format"] == "binary"
        assert schema["properties"]["response_format"]["enum"] == list(RESPONSE_FORMATS)
        assert schema["properties"]["timestamp_granularities[]"]["type"] == "array"
        errors = operation["responses"]["400"]["content"]["application/json"]["schema"]
        assert errors["$ref"].endswith("/ErrorBody")
    for path in ("/v1/models", "/healthz", "/health", "/v1/stats", "/v1/system", "/v1/tune"):
        assert "get" in spec["paths"][path], path
    assert "post" in spec["paths"]["/v1/tune"]
    assert not any(p == "/" or p.startswith("/ui") for p in spec["paths"])  # static files
    # API keys, as /docs's "Authorize" sends them; the probes need none.
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert spec["security"] == [{"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_docs_page_is_html_and_points_at_the_spec_under_the_route_prefix():
    client = TestClient(fake_ingress().http_app(), root_path="/asr")
    page = client.get("/asr/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in page.text and "/asr/openapi.json" in page.text
    assert client.get("/asr/openapi.json").json()["servers"] == [{"url": "/asr"}]


# -- routing errors -----------------------------------------------------------------------


def test_wrong_method_on_a_known_path_is_405_in_openai_shape():
    client = TestClient(fake_ingress().http_app())
    for method, path, allowed in (("POST", "/v1/models", "GET"), ("GET", AUDIO, "POST")):
        response = client.request(method, path, headers={"x-request-id": "req-405"})
        assert response.status_code == 405, path
        body = response.json()
        _assert_openai_error(body, code="method_not_allowed", param=None)
        assert body["request_id"] == "req-405" == response.headers["x-request-id"]
        assert allowed in response.headers["allow"]


def test_unknown_path_is_a_404_in_openai_shape():
    response = TestClient(fake_ingress().http_app()).get("/v1/nothing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "no route GET /v1/nothing",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }


def test_a_fastapi_validation_error_is_a_400_in_openai_shape():
    app = fake_ingress().http_app()

    @app.get("/v1/plain")  # a plain route: the app's exception handler answers
    async def plain(n: int) -> dict:
        return {"n": n}

    router = APIRouter(route_class=OpenAIErrorRoute)  # as the ingress's own routes

    @router.get("/v1/typed")
    async def typed(n: int) -> dict:
        return {"n": n}

    app.include_router(router)
    client = TestClient(app)
    for path in ("/v1/plain", "/v1/typed"):
        assert client.get(path, params={"n": "3"}).json() == {"n": 3}
        response = client.get(path, params={"n": "three"})
        assert response.status_code == 400, path
        _assert_openai_error(response.json(), code="invalid_request", param="n")
        assert response.json()["error"]["message"].startswith("n: ")


def test_form_errors_name_their_field_before_any_stage_is_called():
    client = TestClient(fake_ingress().http_app())  # any stage call fails the test
    files = {"file": ("a.wav", wav(), "audio/wav")}
    for data, param in (
        ({"response_format": "xml"}, "response_format"),
        ({"stream": "maybe"}, "stream"),
        ({"timestamp_granularities[]": "char"}, "timestamp_granularities"),
        ({"min_speakers": "3", "max_speakers": "2"}, "min_speakers"),
        ({"diarize": "true"}, "diarize"),  # no speakers stage on this server
    ):
        response = client.post(AUDIO, files=files, data=data)
        assert response.status_code == 400, data
        _assert_openai_error(response.json(), code="invalid_request", param=param)
    missing = client.post(AUDIO, data={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    unknown = client.post(AUDIO, files=files, data={"model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


# -- checks before the body ---------------------------------------------------------------


def _asgi(app, path: str, headers: dict[str, str]) -> tuple[int, dict, dict, bool]:
    """POST ``path`` straight through ASGI: (status, headers, JSON body, body was read)."""
    read: list[bool] = []

    async def receive() -> dict:
        read.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    status, response_headers, body = asyncio.run(asgi_post(app, path, headers, receive))
    return status, response_headers, json.loads(body), bool(read)


MULTIPART = {"content-type": "multipart/form-data; boundary=x", "content-length": "1000"}


def test_refusals_come_before_the_body_is_read(monkeypatch: pytest.MonkeyPatch):
    # The control: an accepted request does read its body (an empty form: no file).
    status, _, body, read = _asgi(fake_ingress().http_app(), AUDIO, MULTIPART)
    assert (status, body["error"]["param"], read) == (400, "file", True)

    too_large = fake_ingress()
    limit = too_large._options.limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    status, _, body, read = _asgi(
        too_large.http_app(), AUDIO, {**MULTIPART, "content-length": str(limit + 1)}
    )
    assert (status, body["error"]["code"], body["error"]["param"], read) == (
        413,
        "upload_too_large",
        "file",
        False,
    )

    draining = fake_ingress()
    draining.reconfigure({"draining": True})
    status, headers, body, read = _asgi(draining.http_app(), AUDIO, MULTIPART)
    assert (status, body["error"]["code"], headers["retry-after"], read) == (
        503,
        "overloaded",
        "2",
        False,
    )
    assert draining.drain_state() == {"draining": True, "in_flight": 0}

    overloaded = fake_ingress()
    # Requests as long as a new one is expected to be, queued until no more fit (one long
    # request would not do: a short one behind it waits for its share only).
    with contextlib.suppress(OverloadedError):
        for _ in range(10_000):
            overloaded._admission[MODEL].admit(30.0)
    # Declared as a megabyte: it may hold 30 s (the average) as well as any queued request.
    status, headers, body, read = _asgi(
        overloaded.http_app(), AUDIO, {**MULTIPART, "content-length": str(1 << 20)}
    )
    assert (status, body["error"]["code"], read) == (503, "overloaded", False)
    assert int(headers["retry-after"]) >= 1
    # A few hundred bytes hold under a second of audio: its share of the queue fits.
    status, _, body, read = _asgi(overloaded.http_app(), AUDIO, MULTIPART)
    assert (status, body["error"]["param"], read) == (400, "file", True)

    monkeypatch.setenv(KEYS_ENV, "sk-a")
    status, headers, body, read = _asgi(fake_ingress().http_app(), AUDIO, MULTIPART)
    assert (status, body["error"]["code"], headers["www-authenticate"], read) == (
        401,
        "invalid_api_key",
        "Bearer",
        False,
    )


# -- a request all the way through --------------------------------------------------------


def test_a_transcription_through_the_app_as_json_and_as_events():
    server = working_ingress(cache=CacheSettings(model_versions={MODEL: "v1"}))
    client = TestClient(server.http_app(), root_path="/asr")
    files = {"file": ("a.wav", wav(), "audio/wav")}
    first = client.post(f"/asr{AUDIO}", files=files, headers={"x-request-id": "req-1"})
    assert first.status_code == 200, first.text
    assert first.json() == {"text": "hello", "usage": {"type": "duration", "seconds": 1.0}}
    assert first.headers["x-request-id"] == "req-1"
    assert first.headers["x-cache"] == "miss"
    assert float(first.headers["x-audio-duration-s"]) == pytest.approx(1.0)
    again = client.post(f"/asr{AUDIO}/", files=files, data={"response_format": "text"})
    assert (again.status_code, again.text) == (200, "hello")  # another output: a new key
    stream = client.post(f"/asr{AUDIO}", files=files, data={"stream": "true"})
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-cache"] == "hit"  # the same output as the first
    fresh = client.post(f"/asr{AUDIO}", files=files, data={"stream": "true", "cache": "false"})
    assert fresh.headers["x-cache"] == "bypass"
    for response in (stream, fresh):  # a hit replays the transcription's segments
        events = [json.loads(b[len("data: ") :]) for b in response.text.strip().split("\n\n")]
        assert events == [
            {"type": "transcript.text.delta", "delta": "hello", "start": 0.0, "end": 1.0},
            {"type": "transcript.text.done", "text": "hello"},
        ]
    assert server.drain_state() == {"draining": False, "in_flight": 0}
    models = client.get("/asr/v1/models/").json()["data"]
    assert [(m["id"], m["default"], m["capabilities"]["translation"]) for m in models] == [
        (MODEL, True, False)
    ]
    # OpenAI's retrieveModel: one entry, the listed one; an unknown id is its 404.
    assert client.get(f"/asr/v1/models/{MODEL}").json() == models[0]
    missing = client.get("/asr/v1/models/gpt-4o-transcribe")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_ui_is_served_under_the_bare_prefix_and_with_a_trailing_slash():
    client = TestClient(fake_ingress().http_app(), root_path="/asr")
    for path in ("/asr", "/asr/", "/asr/ui", "/asr/ui/"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert '<base href="/asr/ui/">' in page.text
    assert client.head("/asr/ui/app.js").status_code == 200
    assert client.get("/asr/ui/missing.js").status_code == 404


# -- websockets ---------------------------------------------------------------------------


def _with_echo(app):
    @app.websocket("/v1/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    return app


def test_a_websocket_route_added_to_the_app_works(monkeypatch: pytest.MonkeyPatch):
    client = TestClient(_with_echo(fake_ingress().http_app()), root_path="/asr")
    with client.websocket_connect("/asr/v1/echo") as ws:
        ws.send_text("ping")
        assert ws.receive_text() == "ping"

    monkeypatch.setenv(KEYS_ENV, "sk-a")  # with keys, a websocket needs one too
    keyed = TestClient(_with_echo(fake_ingress().http_app()))
    with pytest.raises(WebSocketDisconnect) as info:
        with keyed.websocket_connect("/v1/echo"):
            pass
    assert info.value.code == 1008
    with keyed.websocket_connect("/v1/echo", headers={"Authorization": "Bearer sk-a"}) as ws:
        ws.send_text("ping")
        assert ws.receive_text() == "ping"
