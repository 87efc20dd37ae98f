"""HTTP ingress: the OpenAI-compatible API, and the one place errors become status codes.

Routes: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart, OpenAI
fields), ``GET /v1/models`` (with each model's capabilities),
``GET /healthz`` (200 only when the VAD and every recognizer answer: their replicas take
traffic only after loading and warming their models).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_app.config import ChannelSettings
from serve_app.core import observability
from serve_app.core.audio import AudioLimits
from serve_app.core.diarization import DiarizationSettings
from serve_app.core.errors import (
    AsrError,
    AudioTooLongError,
    DeadlineExceededError,
    InternalError,
    InvalidAudioError,
    InvalidRequestError,
    OverloadedError,
    RecognitionError,
    UnauthorizedError,
    UnknownModelError,
    UnsupportedCodecError,
    UploadTooLargeError,
)
from serve_app.core.memory import HeapTrimmer
from serve_app.online.service import (
    ModelRoute,
    SegmentCallback,
    TranscriptionService,
    unwrap_error,
)
from serve_app.core.punctuate import PunctuateFn
from serve_app.core.speaker_request import EmbedFn, SpeakerRequest
from serve_app.core.transcript import Transcription, render
from serve_app.core.types import RecognitionOptions, SegmentJob
from serve_app.online import request_scope, streaming, system, ui
from serve_app.online.admission import (
    AdmissionController,
    AdmissionPolicy,
    PendingRequests,
    PendingToken,
)
from serve_app.online.auth import ApiKeys
from serve_app.online.cache import CacheOptions, TranscriptionCache, sha256_hex
from serve_app.online.forms import RequestOptions, parse_form
from serve_app.online.retry import RetryPolicy, call_with_retries

logger = logging.getLogger("serve_app.ingress")

STATUS_BY_ERROR: dict[type[AsrError], int] = {
    InvalidRequestError: 400,
    InvalidAudioError: 400,
    UnsupportedCodecError: 415,
    UploadTooLargeError: 413,
    AudioTooLongError: 413,
    UnknownModelError: 404,
    UnauthorizedError: 401,
    OverloadedError: 503,
    DeadlineExceededError: 504,
    RecognitionError: 500,
    InternalError: 500,
}

# Multipart framing around the file: the upload limit is checked on Content-Length with
# this allowance before the body is read, and on the file's own size after.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
# The audio routes and the task each runs (translations: English text out).
_AUDIO_ROUTES: dict[str, Literal["transcribe", "translate"]] = {
    "/v1/audio/transcriptions": "transcribe",
    "/v1/audio/translations": "translate",
}
# Retry-After of a request refused while this instance drains before a stop.
DRAIN_RETRY_AFTER_S = 2.0


@dataclass(frozen=True)
class IngressOptions:
    limits: AudioLimits
    model_names: dict[str, str]  # every accepted name or alias -> canonical name
    default_model: str
    default_options: dict[str, RecognitionOptions]
    pack_segments_ms: dict[str, int] = field(default_factory=dict)  # canonical name -> ms
    health_timeout_s: float = 5.0
    # Default and cap of a request's deadline (the X-Request-Timeout-S header asks for less).
    request_timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    admission: dict[str, AdmissionPolicy] = field(default_factory=dict)  # canonical name
    # The result cache (serve_app/online/cache.py); None: off (every answer says x-cache: bypass).
    cache: CacheOptions | None = None
    # Speakers: channel split layout, and diarization (needs the speaker deployment).
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    diarize_by_default: bool = False
    diarization_settings: DiarizationSettings = field(default_factory=DiarizationSettings)


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
    body = {
        "error": {
            "message": exc.message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": exc.param,
            "code": exc.code,
        },
        "request_id": request_id,
    }
    return status, body, exc


def _classify_foreign(exc: BaseException) -> AsrError:
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, asyncio.CancelledError):
        # A streamed request's work cancelled under it (replica stopping).
        return InternalError("the request was cancelled before it finished")
    if isinstance(exc, (BackPressureError, DeploymentUnavailableError)):
        return OverloadedError(f"the service is overloaded, retry later ({type(exc).__name__})")
    logger.error("unexpected error", exc_info=exc)
    return InternalError(f"internal error: {type(exc).__name__}")


@serve.deployment
class AsrIngress:
    def __init__(
        self,
        vad: DeploymentHandle,
        recognizers: dict[str, DeploymentHandle],
        options: IngressOptions,
        speakers: DeploymentHandle | None = None,
        punctuators: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self._vad = vad
        self._recognizers = recognizers
        self._options = options
        # Canonical model name -> its punctuation stage (only models configured with one).
        self._punctuators = dict(punctuators or {})
        self._capabilities_cache: dict[str, dict] = {}
        # Read here, in the replica, so a Secret mounted as env or file on the node counts.
        self._api_keys = ApiKeys.from_env()
        logger.info("API keys: %s", f"{len(self._api_keys)} set" if self._api_keys else "off")
        self._admission = {
            name: AdmissionController(
                options.admission.get(name, AdmissionPolicy()), model=name, clock=time.monotonic
            )
            for name in recognizers
        }
        self._pending = PendingRequests()
        self._cache: TranscriptionCache | None = options.cache.build() if options.cache else None
        # Graceful stop (serve_app.online.run): set through user_config, counted per replica.
        self._draining = False
        self._in_flight = 0
        routes = {}
        for alias, name in options.model_names.items():
            handle = recognizers[name]
            routes[alias] = ModelRoute(
                name=name,
                recognize=self._recognize_call(handle, name),
                default_options=options.default_options.get(name, RecognitionOptions()),
                pack_segments_ms=options.pack_segments_ms.get(name, 0),
                punctuate=self._punctuate_call(name),
                detects_language=self._detects_language_call(name),
            )
        self._service = TranscriptionService(
            segment=self._vad_call(vad),
            routes=routes,
            default_model=options.default_model,
            limits=options.limits,
            embed=self._embed_call(speakers) if speakers is not None else None,
            diarization_settings=options.diarization_settings,
            channels=options.channels,
        )

    async def __call__(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        path = _route_path(request)
        if ui.StaticUi.handles(path) and request.method in ("GET", "HEAD"):
            # Static files only, open like the probes: a browser cannot send a Bearer key
            # for a page load; every API call the page makes carries the key.
            return self._static_ui().response(
                path, request.scope.get("root_path", ""), request.headers.get("if-none-match")
            )
        try:
            self._api_keys.check(path, request.headers.get("authorization"))
        except UnauthorizedError as exc:
            observability.errors_total().inc(tags={"kind": exc.code, "stage": "auth"})
            denied = error_response(exc, request_id)
            denied.headers["www-authenticate"] = "Bearer"
            return denied
        try:
            if path in _AUDIO_ROUTES and request.method == "POST":
                if self._draining:
                    raise OverloadedError(
                        "the service is shutting down; retry on another instance",
                        retry_after_s=DRAIN_RETRY_AFTER_S,
                    )
                self._in_flight += 1
                try:
                    return await self._transcriptions(request, request_id)
                finally:
                    self._in_flight -= 1
                    self._trim_heap()
            if path == "/v1/models" and request.method == "GET":
                return await self._models()
            if path in ("/healthz", "/health") and request.method == "GET":
                return await self._healthz()
            if path == "/v1/stats" and request.method == "GET":
                return await self._stats()
            if path == "/v1/system" and request.method == "GET":
                return JSONResponse(await self._system_view().system())
            if path == "/v1/tune" and request.method == "GET":
                return JSONResponse(await self._system_view().tune_state())
            if path == "/v1/tune" and request.method == "POST":
                return JSONResponse(await self._system_view().tune(await _json_body(request)))
            return JSONResponse(
                {"error": {"message": f"no route {request.method} {path}", "code": "not_found"}},
                status_code=404,
            )
        except Exception as exc:
            kind = getattr(unwrap_error(exc), "code", type(exc).__name__)
            observability.errors_total().inc(tags={"kind": kind, "stage": "request"})
            return error_response(exc, request_id)

    def reconfigure(self, user_config: dict) -> None:
        """``{"draining": true}``: refuse new transcriptions (503 + Retry-After) and fail
        readiness, finishing what is in flight. ``serve_app.online.run`` sets it before a stop;
        Serve applies a user_config change to every replica without restarting it."""
        self._draining = bool((user_config or {}).get("draining", False))
        logger.info("draining: %s", self._draining)

    def drain_state(self) -> dict:
        """This replica's draining flag and transcription requests in flight."""
        return {"draining": self._draining, "in_flight": self._in_flight}

    def _trim_heap(self) -> None:
        """Uploads and decoded audio are freed after each request: give the pages back
        to the OS now and then (serve_app.core.memory), off the event loop."""
        if getattr(self, "_trimmer", None) is None:
            self._trimmer = HeapTrimmer()
        if self._trimmer.due():
            asyncio.get_running_loop().run_in_executor(None, self._trimmer.after_call)

    def _static_ui(self) -> ui.StaticUi:
        if getattr(self, "_ui", None) is None:
            self._ui = ui.StaticUi()
        return self._ui

    def _system_view(self) -> system.SystemView:
        """Aggregates every recognizer replica through the app's stats board (see
        serve_app/online/system.py for why not through the handles)."""
        if getattr(self, "_system", None) is None:
            self._system = system.SystemView(
                app_name=serve.get_replica_context().app_name,
                models=list(self._recognizers),
                model_names=self._options.model_names,
                queued_audio_s=lambda model: self._admission[model].queued_audio_s,
            )
        return self._system

    def _vad_call(self, vad: DeploymentHandle) -> Callable[[np.ndarray], Awaitable[list]]:
        call = _remote_call(vad, "segments")
        policy = self._options.retry

        async def segment(samples: np.ndarray) -> list:
            scope = request_scope.CURRENT.get()
            segments = await call_with_retries(
                lambda: call(samples),
                policy=policy,
                deadline_unix_s=scope.deadline_unix_s if scope else None,
                what="vad",
                on_retry=_count_retry("vad"),
            )
            if scope is not None and scope.ticket is not None:
                # Silence costs the recognizer nothing: only speech stays queued.
                scope.ticket.shrink_to(sum(seg.duration_ms for seg in segments) / 1000.0)
                self._publish(scope.model)
            return segments

        return segment

    def _retried_call(self, handle: DeploymentHandle, method: str, stage: str):
        """``handle.method(item)``, sent again when its replica died (to another replica,
        or to the restarted one) within the item's ``deadline_unix_s``. Only for
        idempotent calls: a segment, an embedding window, a punctuation request."""
        call = _remote_call(handle, method)
        policy = self._options.retry

        async def retried(item):
            return await call_with_retries(
                lambda: call(item),
                policy=policy,
                deadline_unix_s=item.deadline_unix_s,
                what=stage,
                on_retry=_count_retry(stage),
            )

        return retried

    def _recognize_call(self, handle: DeploymentHandle, model: str):
        call = self._retried_call(handle, "transcribe", "recognize")

        async def recognize(job: SegmentJob):
            result = await call(job)
            scope = request_scope.CURRENT.get()
            if scope is not None and scope.ticket is not None:
                scope.ticket.completed(job.duration_s)
                self._publish(model)
            return result

        return recognize

    def _embed_call(self, handle: DeploymentHandle) -> EmbedFn:
        # One call per embedding window, retried like a segment.
        return self._retried_call(handle, "embed", "embed")

    def _speaker_request(self, request_options: RequestOptions) -> SpeakerRequest:
        """The request's speaker options over the server's defaults; 400 when it asks
        for diarization this server cannot do."""
        diarize = request_options.diarize
        if diarize is None:
            diarize = self._options.diarize_by_default
        if diarize and not self._service.can_diarize:
            raise InvalidRequestError(
                "diarization is not configured on this server (no 'speakers' section)",
                param="diarize",
            )
        channels = request_options.channels or self._options.channels.default
        return SpeakerRequest(
            channels="split" if channels == "split" else "mix",
            diarize=bool(diarize),
            diarization=request_options.diarization_options(),
        )

    def _publish(self, model: str) -> None:
        controller = self._admission[model]
        tags = {"model": model}
        observability.admission_queued_audio_s().set(controller.queued_audio_s, tags=tags)
        observability.admission_drain_rate().set(controller.rate(), tags=tags)

    def _admission_check(
        self, model: str | None, audio_s: float, stage: str, *, pending_audio_s: float = 0.0
    ) -> None:
        """Raise OverloadedError (503 + Retry-After) when the expected wait is too long.

        With ``model`` None (before the form is read) the request is refused only when
        every model's queue is already too long. The requests still uploading or decoding
        (``pending_audio_s``) are not known per model yet: each model is charged all of
        them, which is exact with one model and errs towards refusing with several."""
        names = [self._service.route(model).name] if model is not None else list(self._admission)
        error: OverloadedError | None = None
        for name in names:
            try:
                self._admission[name].check(audio_s, pending_audio_s=pending_audio_s)
                return
            except OverloadedError as exc:
                error = exc
        if error is not None:
            observability.admission_rejections_total().inc(
                tags={"model": names[0] if len(names) == 1 else "any", "stage": stage}
            )
            raise error

    def _deadline_unix_s(self, request: Request) -> float:
        timeout_s = self._options.request_timeout_s
        asked = request.headers.get("x-request-timeout-s")
        if asked:
            try:
                value = float(asked)
            except ValueError:
                raise InvalidRequestError(
                    "X-Request-Timeout-S must be a number of seconds", param="x-request-timeout-s"
                ) from None
            if not value > 0:
                raise InvalidRequestError(
                    "X-Request-Timeout-S must be > 0", param="x-request-timeout-s"
                )
            timeout_s = min(timeout_s, value)
        return time.time() + timeout_s

    async def _transcriptions(self, request: Request, request_id: str) -> Response:
        started = time.perf_counter()
        deadline_unix_s = self._deadline_unix_s(request)
        # The queue (with the requests still uploading ahead of this one, and this one at
        # their average length) may already be too long: answer before reading the body.
        self._admission_check(
            None,
            self._pending.average_audio_s,
            "before_body",
            pending_audio_s=self._pending.audio_s(),
        )
        pending = self._pending.begin()
        try:
            return await self._read_and_transcribe(
                request, request_id, started, deadline_unix_s, pending
            )
        finally:
            pending.end(None)  # a no-op once the audio was decoded

    async def _read_and_transcribe(
        self,
        request: Request,
        request_id: str,
        started: float,
        deadline_unix_s: float,
        pending: PendingToken,
    ) -> Response:
        limits = self._options.limits
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limits.max_upload_bytes + _MULTIPART_OVERHEAD_BYTES:
                raise UploadTooLargeError(
                    f"upload of {int(declared)} bytes exceeds the limit of "
                    f"{limits.max_upload_bytes} bytes",
                    param="file",
                )
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as exc:
            raise InvalidRequestError(f"could not parse multipart form: {exc}") from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("missing 'file' field (multipart upload)", param="file")
        request_options = parse_form(form, task=_AUDIO_ROUTES[_route_path(request)])
        speakers = self._speaker_request(request_options)
        model = request_options.model
        self._service.route(model)  # 404 before decoding anything
        await self._check_capabilities(model, request_options.recognition)
        self._admission_check(model, 0.0, "before_decode")
        data = await upload.read(limits.max_upload_bytes + 1)
        await form.close()
        if len(data) > limits.max_upload_bytes:
            raise UploadTooLargeError(
                f"upload exceeds the limit of {limits.max_upload_bytes} bytes", param="file"
            )
        canonical = self._service.route(model).name
        cache_key = None
        if self._cache is not None and request_options.use_cache:
            digest = await asyncio.to_thread(sha256_hex, data) if len(data) > 2**20 else None
            cache_key = self._cache.key(
                digest or sha256_hex(data), canonical, request_options.output_fields()
            )
            cached = await self._cache.get(cache_key, model=canonical)
            if cached is not None:
                # No decode, VAD or recognizer: nothing queued, no admission ticket.
                if request_options.stream:
                    return self._stream(
                        lambda _: _done(cached), request_options, request_id, "hit", lambda: None
                    )
                return self._answer(cached, request_options, request_id, started, "hit")
        cache_state = "miss" if cache_key is not None else "bypass"
        t_decode = time.perf_counter()
        audio = await self._service.decode(data, keep_channels=speakers.channels == "split")
        decode_s = time.perf_counter() - t_decode
        pending.end(audio.duration_s)
        canonical = self._service.route(model).name
        try:
            # Split: every channel is recognized, so each costs the recognizer its length.
            ticket = self._admission[canonical].admit(audio.duration_s * audio.num_channels)
        except OverloadedError:
            observability.admission_rejections_total().inc(
                tags={"model": canonical, "stage": "after_decode"}
            )
            raise
        self._publish(canonical)
        scope = request_scope.RequestScope(deadline_unix_s, ticket, canonical)

        def release() -> None:
            ticket.close()  # idempotent
            self._publish(canonical)

        async def run(on_segment: SegmentCallback | None = None) -> Transcription:
            # Awaited here, or run in its own task by a stream (the scope is set inside,
            # so both see it, and a stream's ticket is released when its task ends).
            scope_token = request_scope.CURRENT.set(scope)
            try:
                transcription = await self._service.transcribe(
                    audio,
                    model=model,
                    options=request_options.recognition,
                    deadline_unix_s=deadline_unix_s,
                    request_id=request_id,
                    speakers=speakers,
                    on_segment=on_segment,
                )
            finally:
                request_scope.CURRENT.reset(scope_token)
                release()
            _record_latency(transcription, decode_s, started)
            if cache_key is not None and self._cache is not None:
                await self._cache.put(cache_key, transcription)
            return transcription

        if request_options.stream:
            return self._stream(run, request_options, request_id, cache_state, release)
        transcription = await run()
        return self._answer(transcription, request_options, request_id, started, cache_state)

    def _answer(
        self,
        transcription: Transcription,
        request_options: RequestOptions,
        request_id: str,
        started: float,
        cache_state: str,
    ) -> Response:
        body, media_type = self._render(transcription, request_options)
        return Response(
            body,
            media_type=media_type,
            headers={
                "x-request-id": request_id,
                "x-audio-duration-s": f"{transcription.duration_s:.3f}",
                "x-processing-s": f"{time.perf_counter() - started:.3f}",
                "x-cache": cache_state,
            },
        )

    def _render(
        self, transcription: Transcription, request_options: RequestOptions
    ) -> tuple[str, str]:
        """(body, media type) of the answer: the one rendering of a request's options."""
        return render(
            transcription,
            request_options.response_format,
            include_words=request_options.include_words,
            speaker_prefixed=request_options.speaker_text,
        )

    def _done_fields(self, request_options: RequestOptions) -> streaming.DoneFieldsFn:
        """The done event's ``text``: the ``text`` a non-streamed ``json`` answer gives
        (speaker lines and all). With ``response_format=verbose_json`` also ``response``,
        the whole verbose body (an extension: the web UI takes segments from it)."""

        def done_fields(transcription: Transcription) -> dict:
            as_json = dataclasses.replace(request_options, response_format="json")
            out = {"text": json.loads(self._render(transcription, as_json)[0])["text"]}
            if request_options.response_format == "verbose_json":
                out["response"] = json.loads(self._render(transcription, request_options)[0])
            return out

        return done_fields

    def _stream(
        self,
        run: streaming.RunFn,
        request_options: RequestOptions,
        request_id: str,
        cache_state: str,
        release: Callable[[], None],
    ) -> StreamingResponse:
        """Server-Sent Events (serve_app/online/streaming.py). The transcription starts now and
        counts as in flight (graceful stop waits for it) until its task ends."""
        self._in_flight += 1

        def finish() -> None:
            self._in_flight -= 1
            release()

        def body(exc: BaseException) -> dict:
            _status, payload, typed = error_body(exc, request_id)
            observability.errors_total().inc(tags={"kind": typed.code, "stage": "stream"})
            return payload

        stream = streaming.TranscriptStream(
            run,
            error_body=body,
            done_fields=self._done_fields(request_options),
            on_finish=finish,
        )
        stream.start()
        return StreamingResponse(
            stream.events(),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, "x-request-id": request_id, "x-cache": cache_state},
        )

    async def _models(self) -> Response:
        names = sorted(set(self._options.model_names))
        canonical = sorted(set(self._options.model_names.values()))
        found = await asyncio.gather(
            *(self._capabilities(name) for name in canonical), return_exceptions=True
        )
        capabilities = {
            name: caps for name, caps in zip(canonical, found) if isinstance(caps, dict)
        }
        data = []
        for name in names:
            entry = {"id": name, "object": "model", "created": 0, "owned_by": "ray-funasr-serve"}
            # Which entry a request without a model field gets (an extension field).
            entry["default"] = name == self._options.default_model
            caps = capabilities.get(self._options.model_names[name])
            if caps is not None:  # a model still loading is listed without them
                entry["capabilities"] = caps
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    async def _capabilities(self, name: str) -> dict:
        """The model's capabilities (its backend's, asked once, cached), with the
        punctuation stage this app adds on top."""
        cached = self._capabilities_cache.get(name)
        if cached is not None:
            return cached
        caps = dict(
            await asyncio.wait_for(
                self._recognizers[name].capabilities.remote(),
                timeout=self._options.health_timeout_s,
            )
        )
        stage = name in self._punctuators
        caps["punctuation_source"] = "model" if caps.get("punctuation") else None
        if stage and not caps.get("punctuation"):
            caps["punctuation"] = True
            caps["punctuation_source"] = "ct-transformer"
        # Diarization is the app's speaker stage, for every model (diarize=true).
        caps["diarization"] = bool(caps.get("diarization")) or self._service.can_diarize
        self._capabilities_cache[name] = caps
        return caps

    async def _check_capabilities(self, model: str | None, options: RecognitionOptions) -> None:
        """A 400 naming the option before the body is decoded, when the model cannot do
        what the request asks (the recognizer checks again per segment)."""
        name = self._service.route(model).name
        if options.task == "transcribe" and not options.word_timestamps:
            return
        try:
            caps = await self._capabilities(name)
        except Exception:
            return  # not known yet: the recognizer's own validation answers instead
        if options.task == "translate" and not caps.get("translation"):
            raise InvalidRequestError(
                f"model {name!r} cannot translate: translation needs a multilingual Whisper model",
                param="model",
            )
        if options.word_timestamps and not caps.get("word_timestamps"):
            raise InvalidRequestError(
                f"model {name!r} gives no word timestamps (segment timestamps only)",
                param="timestamp_granularities",
            )

    def _punctuate_call(self, name: str) -> PunctuateFn | None:
        handle = self._punctuators.get(name)
        if handle is None:
            return None
        return self._retried_call(handle, "punctuate", "punctuate")

    def _detects_language_call(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def detects_language() -> bool:
            try:
                caps = await self._capabilities(name)
            except Exception:
                return False  # unknown yet: decode per segment as before
            return bool(caps.get("language_detection"))

        return detects_language

    async def _stats(self) -> Response:
        """Batch statistics of one replica per model (exact with one replica; with more,
        use the Prometheus metrics ``asr_batch_items`` and ``asr_padding_efficiency``)."""
        names = list(self._recognizers)
        stats = await asyncio.gather(*(self._recognizers[n].batch_stats.remote() for n in names))
        return JSONResponse(dict(zip(names, stats)))

    async def _healthz(self) -> Response:
        """Ready when the VAD and every recognizer have at least one running replica.

        A replica is RUNNING only after its constructor loaded and warmed its model. This
        asks the Serve controller instead of calling the replicas: a saturated recognizer
        would queue a probe call behind its backlog and fail every Pod's readiness at once.
        """
        if self._draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        app_name = serve.get_replica_context().app_name
        try:
            status = await asyncio.wait_for(
                asyncio.to_thread(serve.status), timeout=self._options.health_timeout_s
            )
            deployments = status.applications[app_name].deployments
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": repr(exc)}, status_code=503)
        running: dict[str, int] = {}
        for name, dep in deployments.items():
            if name != "AsrIngress":
                states: dict = dict(dep.replica_states)
                running[name] = int(states.get("RUNNING", 0))
        checks = {name: {"running_replicas": n} for name, n in running.items()}
        ok = bool(running) and all(n > 0 for n in running.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )


async def _done(transcription: Transcription) -> Transcription:
    return transcription


def _record_latency(transcription: Transcription, decode_s: float, started: float) -> None:
    tags = {"model": transcription.model}
    latency = observability.stage_latency_s()
    latency.observe(decode_s, tags={**tags, "stage": "decode"})
    for stage, seconds in transcription.timings_s.items():
        latency.observe(seconds, tags={**tags, "stage": stage})
    latency.observe(time.perf_counter() - started, tags={**tags, "stage": "total"})


def _route_path(request: Request) -> str:
    """The path below the app's route prefix (Serve passes the prefix as root_path)."""
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")


async def _json_body(request: Request) -> object:
    try:
        return await request.json()
    except Exception as exc:
        raise InvalidRequestError(f"the body must be JSON: {exc}") from exc


def _remote_call(handle: DeploymentHandle, method: str):
    bound = getattr(handle, method)

    async def call(arg):
        response = bound.remote(arg)
        try:
            return await response
        except asyncio.CancelledError:
            # Deadline or client disconnect: cancel the replica's work too (Serve only
            # does that by itself for a disconnect of the parent HTTP request).
            response.cancel()
            raise

    return call


def _count_retry(stage: str) -> Callable[[BaseException], None]:
    def record(exc: BaseException) -> None:
        observability.retries_total().inc(tags={"stage": stage, "kind": type(exc).__name__})

    return record
