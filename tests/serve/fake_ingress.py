"""An ingress replica with fake deployment handles, for in-process HTTP tests (no Ray).

``fake_ingress()`` is a replica whose stages fail the test if a request reaches them;
``working_ingress()`` one whose VAD finds one 1 s segment and whose recognizer answers
``hello``, so a request goes all the way through the FastAPI app, the pipeline's driver
and the renderer. Serve the result's ``http_app()`` with Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import soundfile as sf

from serve_app.config import AudioSettings
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import SegmentTranscript
from serve_app.online.ingress import IngressOptions, IngressServer

MODEL = "m"


class _Call:
    """What ``handle.method.remote(arg)`` returns: awaitable, cancellable."""

    def __init__(self, coro: Awaitable[Any]) -> None:
        self._task = asyncio.ensure_future(coro)

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class _Method:
    def __init__(self, name: str, fn: Callable[..., Awaitable[Any]] | None) -> None:
        self._name = name
        self._fn = fn

    def remote(self, *args: object) -> _Call:
        if self._fn is None:
            raise AssertionError(f"a request reached the {self._name} handle")
        return _Call(self._fn(*args))


class FakeHandle:
    """A deployment handle whose methods are the given async functions (others fail)."""

    def __init__(self, **methods: Callable[..., Awaitable[Any]]) -> None:
        self._methods = methods

    def options(self, **_: Any) -> FakeHandle:
        """``handle.options(multiplexed_model_id=...)``: the same fake."""
        return self

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(name, self._methods.get(name))


def options(**overrides: Any) -> IngressOptions:
    fields: dict[str, Any] = {
        "limits": AudioSettings(),
        "model_names": {MODEL: MODEL},
        "default_model": MODEL,
        "default_options": {},
        **overrides,
    }
    return IngressOptions(**fields)


def fake_ingress(**overrides: Any) -> IngressServer:
    return IngressServer(FakeHandle(), {MODEL: FakeHandle()}, options(**overrides))


def working_ingress(**overrides: Any) -> IngressServer:
    async def segments(samples: np.ndarray) -> list[SpeechSegment]:
        return [SpeechSegment(0, 1000)]

    async def transcribe(job: object) -> SegmentTranscript:
        return SegmentTranscript(text="hello")

    async def capabilities() -> dict:
        return {"language_detection": False, "word_timestamps": False, "translation": False}

    recognizer = FakeHandle(transcribe=transcribe, capabilities=capabilities)
    return IngressServer(FakeHandle(segments=segments), {MODEL: recognizer}, options(**overrides))


def wav(seconds: float = 1.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


async def asgi_post(
    app: Any, path: str, headers: dict[str, str], receive: Callable[[], Awaitable[dict]]
) -> tuple[int, dict[str, str], bytes]:
    """POST ``path`` straight through ASGI with the given ``receive``: (status, response
    headers, body). For what a test client hides: when and how much of a body is read."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, body
