"""Errors as HTTP answers: the one place a failure becomes a status code and a body.

Every failure answers OpenAI's error body, ``{"error": {"message", "type", "param",
"code"}, "request_id"}``, which the official clients turn into their typed exceptions:

- a typed error (serve_app.core.errors) gets its status from :data:`STATUS_BY_ERROR`;
- Ray's back-pressure and unavailable deployments are a 503 (retry later), a cancelled
  request and anything unexpected a 500;
- FastAPI's request validation errors are a 400 naming the field (not FastAPI's 422);
- a known path asked with the wrong method is a 405. An unknown path keeps the short
  ``not_found`` body this service has always answered.

:class:`OpenAIErrorRoute` applies the mapping to everything a route raises, before
FastAPI's and Serve's own exception handlers could see it (Serve registers a plain-text
503 for back-pressure on every FastAPI ingress); :func:`install_error_handlers` covers what
is raised outside a route (routing's 404/405, a validation error of a plain route).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from serve_app.core import observability
from serve_app.core.errors import (
    AsrError,
    AudioTooLongError,
    DeadlineExceededError,
    InternalError,
    InvalidAudioError,
    InvalidRequestError,
    OverloadedError,
    PermissionDeniedError,
    RecognitionError,
    UnauthorizedError,
    UnknownModelError,
    UnsupportedCodecError,
    UploadTooLargeError,
)
from serve_app.core.pipeline import unwrap_error

logger = logging.getLogger("serve_app.ingress")

STATUS_BY_ERROR: dict[type[AsrError], int] = {
    InvalidRequestError: 400,
    InvalidAudioError: 400,
    UnsupportedCodecError: 415,
    UploadTooLargeError: 413,
    AudioTooLongError: 413,
    UnknownModelError: 404,
    UnauthorizedError: 401,
    PermissionDeniedError: 403,
    OverloadedError: 503,
    DeadlineExceededError: 504,
    RecognitionError: 500,
    InternalError: 500,
}


class ErrorDetail(BaseModel):
    message: str
    type: str  # invalid_request_error (4xx) | server_error (5xx)
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """OpenAI's error body (the OpenAPI documentation of every error answer)."""

    error: ErrorDetail
    request_id: str | None = None


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's ``X-Request-Id``, else a new one; kept in the
    scope's state so every answer and log of one request names the same id."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        request_id = Headers(scope=scope).get("x-request-id") or uuid.uuid4().hex
        state["request_id"] = request_id
    return request_id


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The JSON error body OpenAI clients understand, with our status mapping."""
    status, body, exc = error_body(exc, request_id)
    headers = {"x-request-id": request_id}
    if isinstance(exc, OverloadedError):
        # Admission control's estimate; 1 s for back-pressure and unavailable replicas.
        retry_after_s = getattr(exc, "retry_after_s", None) or 1.0
        headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
    return JSONResponse(body, status_code=status, headers=headers)


def error_body(exc: BaseException, request_id: str) -> tuple[int, dict, AsrError]:
    """(status, JSON body, the typed error) of a failure: the one mapping, shared by the
    JSON error responses and the error events of a stream."""
    exc = unwrap_error(exc)
    if not isinstance(exc, AsrError):
        exc = _classify_foreign(exc)
    status = next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 500)
    return status, _body(exc.message, status, exc.param, exc.code, request_id), exc


def _body(message: str, status: int, param: str | None, code: str, request_id: str) -> dict:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": code,
        },
        "request_id": request_id,
    }


def _classify_foreign(exc: BaseException) -> AsrError:
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, RequestValidationError):
        return _invalid_request(exc)
    if isinstance(exc, asyncio.CancelledError):
        # A streamed request's work cancelled under it (replica stopping).
        return InternalError("the request was cancelled before it finished")
    if isinstance(exc, (BackPressureError, DeploymentUnavailableError)):
        return OverloadedError(f"the service is overloaded, retry later ({type(exc).__name__})")
    logger.error("unexpected error", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}")


def _invalid_request(exc: RequestValidationError) -> InvalidRequestError:
    """FastAPI's validation error (a typed route parameter) as a 400 naming the field."""
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "header", "path", "cookie"):
        loc = loc[1:]  # where it came from; the name is what the client sent
    param = loc[-1] if loc else None
    where = ".".join(loc)
    message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    return InvalidRequestError(message, param=param)


def failed(request: Request, exc: Exception) -> JSONResponse:
    """A route's failure as OpenAI's error body, counted (``asr_errors_total``)."""
    kind = getattr(unwrap_error(exc), "code", None)
    if isinstance(exc, RequestValidationError):
        kind = InvalidRequestError.code
    observability.errors_total().inc(tags={"kind": kind or type(exc).__name__, "stage": "request"})
    return error_response(exc, request_id_of(request.scope))


class OpenAIErrorRoute(APIRoute):
    """An APIRoute whose every exception is answered by :func:`failed`.

    A route handler's exception would otherwise reach Starlette's handlers, where Serve
    has registered its own (plain-text 503 for back-pressure) and an unexpected one
    becomes a bare 500 that is re-raised into the replica's log.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException:
                raise
            except Exception as exc:
                return failed(request, exc)

        return answer


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's own answers: 404 (unknown path) and 405 (known path, wrong method)."""
    assert isinstance(exc, HTTPException)
    path = route_path(request.scope)
    if exc.status_code == 404:
        # OpenAI's error shape, as every answer (no request id: nothing was run). A path
        # a route's pattern refuses (a model id with a newline) lands here too.
        message = f"no route {request.method} {path}"
        error = {"message": message, "type": "invalid_request_error", "param": None}
        return JSONResponse({"error": {**error, "code": "not_found"}}, status_code=404)
    request_id = request_id_of(request.scope)
    if exc.status_code == 405:
        message, code = f"method {request.method} is not allowed on {path}", "method_not_allowed"
    else:
        message, code = str(exc.detail), f"http_{exc.status_code}"
    return JSONResponse(
        _body(message, exc.status_code, None, code, request_id),
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "x-request-id": request_id},
    )


async def _failed_handler(request: Request, exc: Exception) -> Response:
    return failed(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    """The handlers for what is raised outside an :class:`OpenAIErrorRoute`."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _failed_handler)
    app.add_exception_handler(AsrError, _failed_handler)


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")
