"""The ingress's HTTP API as a FastAPI app: routes, the checks before routing, OpenAPI.

Routes (below the app's route prefix):

- ``POST /v1/audio/transcriptions``, ``/v1/audio/translations``: OpenAI's multipart upload
  (serve_app.online.forms documents the fields); JSON or text, or Server-Sent Events with
  ``stream=true``;
- ``GET /v1/models`` and ``/v1/models/{id}``; ``GET /healthz`` and ``/health`` (readiness, no key);
- ``GET /v1/stats``, ``GET /v1/system``, ``GET``/``POST /v1/tune``;
- ``GET /`` and ``/ui/...``: the web UI's static files (no key: a browser cannot send one
  for a page load; every API call the page makes carries it);
- ``GET /docs`` and ``/openapi.json``: this API's documentation (no key, like the UI);
- websockets (serve_app.online.realtime): ``/v1/realtime`` (OpenAI's realtime
  transcription protocol) and ``/funasr`` (FunASR's runtime protocol; also at ``/``,
  where FunASR's clients connect by default).

:func:`build_http_app` builds one app around one ingress replica (``IngressApi``), so the
routes are plain closures, a test serves the app in-process with Starlette's TestClient,
and a websocket route (``@app.websocket``) is added like any other.

Why the audio routes take the raw ``Request`` instead of ``Form()``/``File()`` parameters:
FastAPI reads and spools the whole multipart body before a dependency or the handler runs
when a route declares them. This service answers an overloaded queue (503 + Retry-After),
a draining replica (503) and a declared Content-Length over the upload limit (413) before
it reads a byte of the body, and a wrong API key (401) before routing: a burst of large
uploads must cost nothing once it is refused. So the handler makes those checks and then
parses the form itself into the typed :class:`~serve_app.online.forms.TranscriptionForm`,
and the route's OpenAPI ``requestBody`` is generated from that same model.
"""

from __future__ import annotations

from typing import Literal, Protocol

from fastapi import APIRouter, FastAPI, WebSocket
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.core import observability
from serve_app.core.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    UnauthorizedError,
    UnknownModelError,
)
from serve_app.online import system, ui
from serve_app.online.auth import ApiKeys
from serve_app.online.forms import openapi_request_body
from serve_app.online.http_errors import (
    ErrorBody,
    OpenAIErrorRoute,
    error_response,
    install_error_handlers,
    request_id_of,
    route_path,
)
from serve_app.online.realtime import KEY_SUBPROTOCOL_PREFIX, serve_socket
from serve_app.online.realtime.backend import LiveBackend

Task = Literal["transcribe", "translate"]
DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
_ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Invalid request or audio (``param`` names the field)",
        401: "Missing or wrong API key (only when keys are configured)",
        404: "Unknown model",
        413: "Upload or audio over the configured limit",
        415: "Audio codec not supported",
        503: "Overloaded or draining: retry after ``Retry-After`` seconds",
        504: "The request's deadline passed (``X-Request-Timeout-S``)",
    }.items()
}
_AUDIO_RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "The transcript: JSON (json, verbose_json), text (text, srt, vtt), "
        "or Server-Sent Events with stream=true",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string"}},
                }
            },
            "text/plain": {},
            "text/event-stream": {},
        },
    },
    **_ERRORS,
}
# What the other routes answer besides their 200 (declared, so a schema check of every
# answer, scripts/openapi_fuzz.py, holds the API to it).
_KEYED: dict[int | str, dict] = {401: _ERRORS[401]}
_TUNE_RESPONSES: dict[int | str, dict] = {
    **{status: _ERRORS[status] for status in (400, 401, 404)},
    403: {"model": ErrorBody, "description": "A client key where operator keys are configured"},
}
_HEALTH_BODY = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable", "draining"]},
        "checks": {"type": "object"},
        "error": {"type": "string"},
    },
}
_HEALTH_RESPONSES: dict[int | str, dict] = {
    200: {"description": "Ready", "content": {"application/json": {"schema": _HEALTH_BODY}}},
    503: {
        "description": "Not ready: a stage has no running replica, or this replica drains",
        "content": {"application/json": {"schema": _HEALTH_BODY}},
    },
}
_MODELS_BODY = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", "created", "owned_by"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                },
            },
        },
    },
}
_TUNE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {"type": "string"},
                    "max_batch_audio_s": {"type": "number", "exclusiveMinimum": 0},
                    "batch_wait_timeout_s": {"type": "number", "minimum": 0, "maximum": 60},
                },
                "additionalProperties": False,
            }
        }
    },
}


class IngressApi(Protocol):
    """What the routes need of the ingress replica (serve_app.online.ingress)."""

    api_keys: ApiKeys
    health_paths: tuple[str, ...]

    @property
    def live(self) -> LiveBackend | None:
        """Live sessions (serve_app.online.realtime); None: no websocket routes."""

    def static_ui(self) -> ui.StaticUi: ...

    async def transcribe(self, request: Request, task: Task) -> Response: ...

    async def models(self) -> dict: ...

    async def health(self) -> tuple[int, dict]: ...

    async def stats(self) -> dict: ...

    def system_view(self) -> system.SystemView: ...


def build_http_app(server: IngressApi) -> FastAPI:
    """The FastAPI app of one ingress replica."""
    app = FastAPI(
        title="ray-funasr-serve",
        summary="OpenAI-compatible speech recognition (FunASR, faster-whisper) on Ray Serve",
        version="1",
        docs_url=DOCS_URL,
        openapi_url=OPENAPI_URL,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    app.include_router(_api_router(server))
    if server.live is not None:
        app.include_router(_live_router(server.live))
    app.include_router(_ui_router(server))
    app.add_middleware(BeforeRouting, api_keys=server.api_keys)
    _document_bearer_keys(app)
    return app


def _document_bearer_keys(app: FastAPI) -> None:
    """The API keys in OpenAPI (BeforeRouting checks them, not a route dependency), so
    ``/docs`` offers "Authorize" and sends the key with its requests."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "Needed only where the server has API keys (ASR_API_KEYS)",
            }
            schema["security"] = [{"apiKey": []}]
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _api_router(server: IngressApi) -> APIRouter:
    router = APIRouter(route_class=OpenAIErrorRoute)

    @router.post(
        "/v1/audio/transcriptions",
        summary="Transcribe audio (OpenAI's createTranscription)",
        openapi_extra={"requestBody": openapi_request_body()},
        responses=_AUDIO_RESPONSES,
    )
    async def transcriptions(request: Request) -> Response:
        return await server.transcribe(request, "transcribe")

    @router.post(
        "/v1/audio/translations",
        summary="Translate speech to English text (OpenAI's createTranslation)",
        openapi_extra={"requestBody": openapi_request_body()},
        responses=_AUDIO_RESPONSES,
    )
    async def translations(request: Request) -> Response:
        return await server.transcribe(request, "translate")

    @router.get(
        "/v1/models",
        summary="The served models, with capabilities",
        responses={
            200: {"content": {"application/json": {"schema": _MODELS_BODY}}},
            **_KEYED,
        },
    )
    async def models() -> JSONResponse:
        return JSONResponse(await server.models())

    @router.get(
        "/v1/models/{model_id:path}",
        summary="One served model, with capabilities (OpenAI's retrieveModel)",
        responses={404: {"description": "the model is not served"}, **_KEYED},
    )
    async def model(model_id: str) -> JSONResponse:
        listed = (await server.models())["data"]
        for entry in listed:
            if entry["id"] == model_id:
                return JSONResponse(entry)
        raise UnknownModelError(
            f"model {model_id!r} is not served; available: {[e['id'] for e in listed]}",
            param="model",
        )

    async def health() -> JSONResponse:
        status, body = await server.health()
        return JSONResponse(body, status_code=status)

    for path in server.health_paths:
        router.add_api_route(
            path,
            health,
            methods=["GET"],
            summary="Readiness: every stage has a replica",
            openapi_extra={"security": []},  # probes carry no key
            responses=_HEALTH_RESPONSES,
        )

    @router.get("/v1/stats", summary="Batch statistics of one replica per model", responses=_KEYED)
    async def stats() -> JSONResponse:
        return JSONResponse(await server.stats())

    @router.get(
        "/v1/system", summary="Every replica's load, throughput and settings", responses=_KEYED
    )
    async def system_state() -> JSONResponse:
        return JSONResponse(await server.system_view().system())

    @router.get("/v1/tune", summary="The live batching settings per model", responses=_KEYED)
    async def tune_state() -> JSONResponse:
        return JSONResponse(await server.system_view().tune_state())

    @router.post(
        "/v1/tune",
        summary="Change a model's batching settings on every replica, live",
        openapi_extra={"requestBody": _TUNE_BODY},
        responses=_TUNE_RESPONSES,
    )
    async def tune(request: Request) -> JSONResponse:
        # Read here, not as a pydantic body: system.parse_tune_body's 400s name the field.
        return JSONResponse(await server.system_view().tune(await _json_body(request)))

    return router


def _live_router(live: LiveBackend) -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await serve_socket(websocket, live, "openai")

    async def funasr(websocket: WebSocket) -> None:
        await serve_socket(websocket, live, "funasr")

    for path in ("/funasr", "/"):
        router.add_api_websocket_route(path, funasr)
    return router


def _ui_router(server: IngressApi) -> APIRouter:
    router = APIRouter(route_class=OpenAIErrorRoute, include_in_schema=False)

    async def static(request: Request) -> Response:
        return server.static_ui().response(
            route_path(request.scope),
            request.scope.get("root_path", ""),
            request.headers.get("if-none-match"),
        )

    for path in ("/", "/ui", "/ui/{asset:path}"):
        router.add_api_route(path, static, methods=["GET", "HEAD"])
    return router


async def _json_body(request: Request) -> object:
    try:
        return await request.json()
    except Exception as exc:
        raise InvalidRequestError(f"the body must be JSON: {exc}") from exc


class BeforeRouting:
    """Pure ASGI middleware, so it runs before routing and before any body is read:

    - the path below the route prefix loses its trailing slash (``/ui/``, ``/v1/models/``
      and the bare prefix ``/asr`` route as they always did, no redirect);
    - the request gets its id (``X-Request-Id`` or a new one, serve_app.online.http_errors);
    - with API keys configured, every path but the probes, the UI's files and the docs
      needs ``Authorization: Bearer <key>``: a 401 in OpenAI's shape otherwise, for unknown
      paths too (a 404 would map the API). A websocket may carry its key as the
      subprotocol ``openai-insecure-api-key.<key>`` instead (browsers cannot set headers);
      one without a key is closed before it is accepted (1008; the handshake answers 403).
    """

    def __init__(self, app: ASGIApp, api_keys: ApiKeys) -> None:
        self.app = app
        self._api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        scope = {**scope, "path": scope.get("root_path", "") + path}
        request_id = request_id_of(scope)
        if not _open_without_key(scope, path):
            try:
                self._api_keys.check(path, _authorization(scope), scope.get("method", "GET"))
            except (UnauthorizedError, PermissionDeniedError) as exc:
                observability.errors_total().inc(tags={"kind": exc.code, "stage": "auth"})
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.code})
                    return
                denied = error_response(exc, request_id)
                if isinstance(exc, UnauthorizedError):
                    denied.headers["www-authenticate"] = "Bearer"
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    headers = Headers(scope=scope)
    value = headers.get("authorization")
    if value is None and scope["type"] == "websocket":
        for name in scope.get("subprotocols") or ():
            if name.startswith(KEY_SUBPROTOCOL_PREFIX):
                return "Bearer " + name[len(KEY_SUBPROTOCOL_PREFIX) :]
    return value


def _open_without_key(scope: Scope, path: str) -> bool:
    """Pages a browser loads without a key: the UI's files and the API's documentation.
    (The probes are open in :class:`ApiKeys` itself.)"""
    if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    return ui.StaticUi.handles(path) or path in (DOCS_URL, OPENAPI_URL)
