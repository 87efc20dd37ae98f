"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` of one ingress replica.

One request, in order: its deadline; admission before the body (the queue, with the
requests still uploading ahead of it, may already be too long); the declared upload size;
the form (serve_app.online.forms); the model and what it can do; admission before decode;
the upload's size; the result cache; decode; admission of the decoded audio; the
transcription (serve_app.online.service); the answer, as one response or as Server-Sent
Events (serve_app.online.streaming). Everything before the form is checked before a byte
of the body is read (serve_app.online.routes says why that matters).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive

from serve_app.core import observability
from serve_app.core.errors import InvalidRequestError, OverloadedError, UploadTooLargeError
from serve_app.core.speaker_request import SpeakerRequest
from serve_app.core.transcript import Transcription, render
from serve_app.core.types import RecognitionOptions
from serve_app.online import request_scope, streaming
from serve_app.online.admission import (
    AdmissionController,
    InFlight,
    PendingRequests,
    PendingToken,
)
from serve_app.online.cache import TranscriptionCache, sha256_hex
from serve_app.online.forms import RequestOptions, TranscriptionForm
from serve_app.online.http_errors import error_body, request_id_of
from serve_app.online.service import SegmentCallback, TranscriptionService

if TYPE_CHECKING:
    from serve_app.online.ingress import IngressOptions

# The fewest bytes a second of audio takes (AMR-NB at 4.75 kbit/s; Opus can go lower,
# rarely): a size's upper bound on its duration, for admission before decoding.
MIN_AUDIO_BYTES_PER_S = 500
# Multipart framing around the file: the upload limit is checked on Content-Length with
# this allowance before the body is read, and on the file's own size after.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Fields besides the file a form may carry (a bound on what a client makes us parse).
_MAX_FORM_FIELDS = 32


class TranscriptionEndpoint:
    """The audio routes' work; the ingress owns the state it shares with other routes
    (admission controllers, cache, requests in flight) and passes it in."""

    def __init__(
        self,
        *,
        service: TranscriptionService,
        options: IngressOptions,
        admission: dict[str, AdmissionController],
        pending: PendingRequests,
        cache: TranscriptionCache | None,
        in_flight: InFlight,
        capabilities: Callable[[str], Awaitable[dict]],
        publish: Callable[[str], None],
        available: Callable[[str, bool], Awaitable[None]] | None = None,
    ) -> None:
        self._service = service
        self._options = options
        self._admission = admission
        self._pending = pending
        self._cache = cache
        self._in_flight = in_flight
        self._capabilities = capabilities
        self._publish = publish
        self._available = available

    async def handle(self, request: Request, task: Literal["transcribe", "translate"]) -> Response:
        """One audio request (``task``: ``translate`` for ``/v1/audio/translations``)."""
        started = time.perf_counter()
        request_id = request_id_of(request.scope)
        deadline_unix_s = self._deadline_unix_s(request)
        # The queue (with the requests still uploading ahead of this one, and this one at
        # their average length, or what its size can hold) may already be too long:
        # answer before reading the body.
        self._admission_check(
            None,
            self._expected_audio_s(request.headers.get("content-length")),
            "before_body",
            pending_audio_s=self._pending.audio_s(),
        )
        pending = self._pending.begin()
        try:
            return await self._read_and_transcribe(
                request, task, request_id, started, deadline_unix_s, pending
            )
        finally:
            pending.end(None)  # a no-op once the audio was decoded

    async def _read_and_transcribe(
        self,
        request: Request,
        task: Literal["transcribe", "translate"],
        request_id: str,
        started: float,
        deadline_unix_s: float,
        pending: PendingToken,
    ) -> Response:
        limits = self._options.limits
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
                raise UploadTooLargeError(
                    f"upload of {int(declared)} bytes exceeds the limit of "
                    f"{limits.max_upload_bytes} bytes",
                    param="file",
                )
        # The body is counted as it arrives (a chunked upload declares no length): past
        # the limit the read stops with a 413, before the rest is spooled anywhere.
        limited = Request(
            request.scope,
            receive=_limited_receive(
                request.receive, limits.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            ),
        )
        try:
            form = await limited.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        except UploadTooLargeError:
            raise
        except Exception as exc:
            raise InvalidRequestError(f"could not parse multipart form: {exc}") from exc
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("missing 'file' field (multipart upload)", param="file")
            request_options = TranscriptionForm.from_form(form).options(task)
            speakers = self._speaker_request(request_options)
            model = request_options.model
            route = self._service.route(model)  # 404 before decoding anything
            if self._available is not None:  # 503 when its stages have no replica
                await self._available(route.name, speakers.diarize)
            await self._check_capabilities(model, request_options.recognition)
            # Its own length is known once decoded: until then, what its size can hold.
            self._admission_check(model, self._expected_audio_s(upload.size), "before_decode")
            data = await upload.read(limits.max_upload_bytes + 1)
        finally:
            await form.close()  # the spooled file, on every path
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
        scope = request_scope.RequestScope(
            deadline_unix_s,
            ticket,
            canonical,
            signals_left=audio.num_channels,
            signal_s=audio.duration_s,
        )

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

    def _deadline_unix_s(self, request: Request) -> float:
        timeout_s = self._options.settings.request_timeout_s
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

    def _expected_audio_s(self, size_bytes: object) -> float:
        """A request's audio before it is decoded: the average of recent requests, but no
        more than its size holds at 4 kbit/s (AMR's, the lowest codec rate): one hour-long
        upload made the average an hour, and a 3 s file after it was refused as one."""
        average_s = self._pending.average_audio_s
        size = int(size_bytes) if str(size_bytes).isdigit() else None
        return average_s if size is None else min(average_s, size / MIN_AUDIO_BYTES_PER_S)

    def _admission_check(
        self, model: str | None, audio_s: float, stage: str, *, pending_audio_s: float = 0.0
    ) -> None:
        """Raise OverloadedError (503 + Retry-After) when the expected wait is too long.

        With ``model`` None (before the form is read) the request is refused only when
        every model's queue is already too long, with the soonest ``Retry-After`` of them
        (not the last model's: an idle model with a cold rate guess answered 308 s for a
        request to a model that could take it in 2, and OpenAI's client does not retry
        past 120 s). The requests still uploading or decoding (``pending_audio_s``) are
        not known per model yet: each model is charged all of them, which is exact with
        one model and errs towards refusing with several."""
        names = [self._service.route(model).name] if model is not None else list(self._admission)
        error: OverloadedError | None = None
        for name in names:
            try:
                self._admission[name].check(audio_s, pending_audio_s=pending_audio_s)
                return
            except OverloadedError as exc:
                if error is None or (exc.retry_after_s or 0.0) < (error.retry_after_s or 0.0):
                    error = exc
        if error is not None:
            observability.admission_rejections_total().inc(
                tags={"model": names[0] if len(names) == 1 else "any", "stage": stage}
            )
            raise error

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

    def _answer(
        self,
        transcription: Transcription,
        request_options: RequestOptions,
        request_id: str,
        started: float,
        cache_state: str,
    ) -> Response:
        body, media_type = _render(transcription, request_options)
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
        in_flight = self._in_flight
        in_flight.count += 1

        def finish() -> None:
            in_flight.count -= 1
            release()

        def body(exc: BaseException) -> dict:
            _status, payload, typed = error_body(exc, request_id)
            observability.errors_total().inc(tags={"kind": typed.code, "stage": "stream"})
            return payload

        stream = streaming.TranscriptStream(
            run,
            error_body=body,
            done_fields=_done_fields(request_options),
            on_finish=finish,
        )
        stream.start()
        return StreamingResponse(
            stream.events(),
            media_type=streaming.MEDIA_TYPE,
            headers={**streaming.HEADERS, "x-request-id": request_id, "x-cache": cache_state},
        )


def _render(transcription: Transcription, request_options: RequestOptions) -> tuple[str, str]:
    """(body, media type) of the answer: the one rendering of a request's options."""
    return render(
        transcription,
        request_options.response_format,
        include_words=request_options.include_words,
        speaker_prefixed=request_options.speaker_text,
    )


def _done_fields(request_options: RequestOptions) -> streaming.DoneFieldsFn:
    """The done event's ``text``: the ``text`` a non-streamed ``json`` answer gives
    (speaker lines and all). With ``response_format=verbose_json`` also ``response``,
    the whole verbose body (an extension: the web UI takes segments from it)."""

    def done_fields(transcription: Transcription) -> dict:
        as_json = dataclasses.replace(request_options, response_format="json")
        out = {"text": json.loads(_render(transcription, as_json)[0])["text"]}
        if request_options.response_format == "verbose_json":
            out["response"] = json.loads(_render(transcription, request_options)[0])
        return out

    return done_fields


def _limited_receive(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises :class:`UploadTooLargeError` once the body passes
    ``max_bytes`` (the multipart parser then stops reading it)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise UploadTooLargeError(
                    f"upload exceeds the limit of {max_bytes - MULTIPART_OVERHEAD_BYTES} bytes",
                    param="file",
                )
        return message

    return limited


async def _done(transcription: Transcription) -> Transcription:
    return transcription


def _record_latency(transcription: Transcription, decode_s: float, started: float) -> None:
    tags = {"model": transcription.model}
    latency = observability.stage_latency_s()
    latency.observe(decode_s, tags={**tags, "stage": "decode"})
    for stage, seconds in transcription.timings_s.items():
        latency.observe(seconds, tags={**tags, "stage": stage})
    latency.observe(time.perf_counter() - started, tags={**tags, "stage": "total"})
