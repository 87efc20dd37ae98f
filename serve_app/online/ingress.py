"""The HTTP ingress deployment: one replica's state, its stage calls, and its FastAPI app.

:class:`IngressServer` is a plain class (no Ray decorator): it wires the deployment
handles into the pipeline's driver (serve_app.online.service) with retries, deadlines and
admission accounting, and answers what the routes ask (serve_app.online.routes: the
OpenAI-compatible API, ``/healthz``, the UI, ``/docs``). :class:`AsrIngress` is that class
behind Serve's ASGI ingress, the deployment ``serve_app.online.app`` binds. Errors become
status codes in one place, serve_app.online.http_errors.

``/healthz`` is 200 only when the VAD and every recognizer have a running replica (their
replicas take traffic only after loading and warming their models).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import (
    AudioSettings,
    CacheSettings,
    ChannelSettings,
    DiarizationSettings,
    IngressSettings,
)
from serve_app.core import observability
from serve_app.core.memory import HeapTrimmer
from serve_app.core.punctuate import PunctuateFn
from serve_app.core.speaker_request import EmbedFn
from serve_app.core.types import RecognitionOptions, SegmentJob, StreamReply, StreamStep
from serve_app.online import request_scope, system, ui
from serve_app.online.admission import (
    AdmissionController,
    AdmissionPolicy,
    InFlight,
    PendingRequests,
)
from serve_app.online.auth import ApiKeys
from serve_app.online.availability import ReplicaWatch, serve_running_replicas
from serve_app.online.cache import build_cache
from serve_app.online.realtime.ingress_live import IngressLive
from serve_app.online.retry import call_with_retries
from serve_app.online.routes import build_http_app
from serve_app.online.service import ModelRoute, TranscriptionService
from serve_app.online.transcription import TranscriptionEndpoint
from serve_app.vad import streaming as streaming_vad

logger = logging.getLogger("serve_app.ingress")

# The deployment's name; /healthz counts the replicas of every other deployment.
INGRESS_DEPLOYMENT = "AsrIngress"


@dataclass(frozen=True)
class IngressOptions:
    """The ingress's part of the app config: its own sections as they are (``settings``,
    ``cache``, ``channels``) and the per-model tables the builder derives from the
    ``recognizers`` and ``speakers`` sections (serve_app.online.app)."""

    limits: AudioSettings
    model_names: dict[str, str]  # every accepted name or alias -> canonical name
    default_model: str
    default_options: dict[str, RecognitionOptions]
    settings: IngressSettings = field(default_factory=IngressSettings)
    pack_segments_ms: dict[str, int] = field(default_factory=dict)  # canonical name -> ms
    redecode_rounds: dict[str, int] = field(default_factory=dict)  # canonical name
    items_in_flight: dict[str, int] = field(default_factory=dict)  # per request, 0: all
    admission: dict[str, AdmissionPolicy] = field(default_factory=dict)  # canonical name
    # The result cache (serve_app/online/cache.py), its model_versions filled in for every
    # model; disabled: every answer says x-cache: bypass.
    cache: CacheSettings = field(default_factory=lambda: CacheSettings(enabled=False))
    # Speakers: channel split layout, and diarization (needs the speaker deployment).
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    diarize_by_default: bool = False
    diarization_settings: DiarizationSettings = field(default_factory=DiarizationSettings)


class IngressServer:
    """One ingress replica's state and the answers the routes give (no Ray decorator:
    tests build it with fake handles and serve :meth:`http_app` in-process)."""

    # Readiness probes ask these (k8s/: the worker Pods' readinessProbe); open without a key.
    health_paths: tuple[str, ...] = ("/healthz", "/health")

    def __init__(
        self,
        vad: DeploymentHandle,
        recognizers: dict[str, DeploymentHandle],
        options: IngressOptions,
        speakers: DeploymentHandle | None = None,
        punctuators: dict[str, DeploymentHandle] | None = None,
        streamers: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self._vad = vad
        self._recognizers = recognizers
        self._options = options
        # Canonical model name -> its punctuation stage (only models configured with one).
        self._punctuators = dict(punctuators or {})
        self._capabilities_cache: dict[str, dict] = {}
        self._capabilities_calls: dict[str, asyncio.Task] = {}
        self._watch: ReplicaWatch | None = None
        self._started_monotonic = time.monotonic()
        # Read here, in the replica, so a Secret mounted as env or file on the node counts.
        self.api_keys = ApiKeys.from_env()
        logger.info("API keys: %s", f"{len(self.api_keys)} set" if self.api_keys else "off")
        self._admission = {
            name: AdmissionController(
                options.admission.get(name, AdmissionPolicy()), model=name, clock=time.monotonic
            )
            for name in recognizers
        }
        # Graceful stop (serve_app.online.run): set through user_config, counted per replica.
        self._in_flight = InFlight()
        self._trimmer: HeapTrimmer | None = None
        self._ui: ui.StaticUi | None = None
        self._system: system.SystemView | None = None
        routes = {}
        for alias, name in options.model_names.items():
            handle = recognizers[name]
            routes[alias] = ModelRoute(
                name=name,
                recognize=self._recognize_call(handle, name),
                default_options=options.default_options.get(name, RecognitionOptions()),
                pack_segments_ms=options.pack_segments_ms.get(name, 0),
                redecode_rounds=options.redecode_rounds.get(name, 0),
                items_in_flight=options.items_in_flight.get(name, 0),
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
        # Live sessions (websockets): finals through the same service, partials as
        # low-priority items of the same recognizer queues.
        realtime = options.settings.realtime
        self.live: IngressLive | None = None
        if realtime.enabled:
            self.live = IngressLive(
                settings=realtime,
                service=self._service,
                admission=self._admission,
                partial_calls={n: _remote_call(h, "transcribe") for n, h in recognizers.items()},
                stream_calls={n: _StreamHandle(h) for n, h in (streamers or {}).items()},
                request_timeout_s=options.settings.request_timeout_s,
                publish=self._publish,
            )
            try:  # the Silero VAD every session's turn detection shares: loaded now
                streaming_vad.load_model()
            except Exception as exc:
                logger.warning("live sessions will fail: no streaming VAD (%r)", exc)
        self._transcriptions = TranscriptionEndpoint(
            service=self._service,
            options=options,
            admission=self._admission,
            pending=PendingRequests(),
            cache=build_cache(options.cache),
            in_flight=self._in_flight,
            capabilities=self._capabilities,
            publish=self._publish,
            available=self._check_available,
        )

        # Ask every model's capabilities now, while its queue is empty (in a replica the
        # constructor runs on the event loop): a request under load then never waits
        # behind that queue to learn whether the model detects languages.
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (in-process tests): asked on first use
            pass
        else:
            for name in recognizers:
                self._capabilities_call(name)

    def http_app(self) -> FastAPI:
        """This replica's FastAPI app (serve_app.online.routes)."""
        return build_http_app(self)

    # -- graceful stop -------------------------------------------------------------------

    def reconfigure(self, user_config: dict) -> None:
        """``{"draining": true}``: refuse new transcriptions (503 + Retry-After) and fail
        readiness, finishing what is in flight. ``serve_app.online.run`` sets it before a stop;
        Serve applies a user_config change to every replica without restarting it."""
        self._in_flight.draining = bool((user_config or {}).get("draining", False))
        logger.info("draining: %s", self._in_flight.draining)

    def drain_state(self) -> dict:
        """This replica's draining flag and transcription requests in flight."""
        return {"draining": self._in_flight.draining, "in_flight": self._in_flight.count}

    # -- what the routes answer ----------------------------------------------------------

    async def transcribe(
        self, request: Request, task: Literal["transcribe", "translate"]
    ) -> Response:
        """``POST /v1/audio/transcriptions`` (``translations``: task ``translate``)."""
        self._in_flight.check_open()
        self._in_flight.count += 1
        try:
            return await self._transcriptions.handle(request, task)
        finally:
            self._in_flight.count -= 1
            self._trim_heap()

    def static_ui(self) -> ui.StaticUi:
        if self._ui is None:
            self._ui = ui.StaticUi()
        return self._ui

    def system_view(self) -> system.SystemView:
        """Aggregates every recognizer replica through the app's stats board (see
        serve_app/online/system.py for why not through the handles)."""
        if self._system is None:
            self._system = system.SystemView(
                app_name=serve.get_replica_context().app_name,
                models=list(self._recognizers),
                model_names=self._options.model_names,
                queued_audio_s=lambda model: self._admission[model].queued_audio_s,
            )
        return self._system

    async def models(self) -> dict:
        """``GET /v1/models``: OpenAI's list, with each model's capabilities."""
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
        return {"object": "list", "data": data}

    async def stats(self) -> dict:
        """Batch statistics of one replica per model (exact with one replica; with more,
        use the Prometheus metrics ``asr_batch_items`` and ``asr_padding_efficiency``)."""
        names = list(self._recognizers)
        stats = await asyncio.gather(*(self._recognizers[n].batch_stats.remote() for n in names))
        return dict(zip(names, stats))

    async def health(self) -> tuple[int, dict]:
        """(status, body) of ``/healthz``: ready when the VAD and every recognizer have at
        least one running replica.

        A replica is RUNNING only after its constructor loaded and warmed its model. This
        asks the Serve controller instead of calling the replicas: a saturated recognizer
        would queue a probe call behind its backlog and fail every Pod's readiness at once.
        """
        if self._in_flight.draining:
            return 503, {"status": "draining"}
        watch = self._replica_watch()
        if watch is None:
            return 503, {"status": "unavailable", "error": "not in a Serve replica"}
        try:
            running, age_s = await watch.running()
        except Exception as exc:
            return 503, {"status": "unavailable", "error": repr(exc)}
        running.pop(INGRESS_DEPLOYMENT, None)
        checks = {name: {"running_replicas": n} for name, n in running.items()}
        ok = bool(running) and all(n > 0 for n in running.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": checks,
            # Above health_timeout_s: the controller was slow, its last read answered.
            "read_age_s": round(age_s, 1),
        }
        return (200 if ok else 503), body

    # -- replicas to send to ----------------------------------------------------------------

    async def _check_available(self, model: str, diarize: bool) -> None:
        """A 503 naming the stage when the request's stages have had no running replica
        for ``unavailable_after_s`` (serve_app.online.availability). Outside Serve (tests
        with fake handles) there is no controller to ask: nothing is checked."""
        watch = self._replica_watch()
        if watch is None:
            return
        stages = ["VadDeployment", f"Recognizer-{model}"]
        if diarize and self._service.can_diarize:
            stages.append("SpeakerDeployment")
        if model in self._punctuators:
            stages.append(f"Punctuation-{model}")
        await watch.check(stages, f"model {model!r}")

    def _replica_watch(self) -> ReplicaWatch | None:
        """The controller's replica counts, shared by /healthz and every request of this
        replica (serve_app.online.availability); None outside Serve (tests with fake
        handles have no controller to ask)."""
        if self._watch is None:
            try:
                app_name = serve.get_replica_context().app_name
            except Exception:
                return None
            settings = self._options.settings
            self._watch = ReplicaWatch(
                lambda: serve_running_replicas(app_name),
                unavailable_after_s=settings.unavailable_after_s,
                timeout_s=settings.health_timeout_s,
                stale_ok_s=settings.unavailable_after_s,
                started=self._started_monotonic,
            )
        return self._watch

    # -- capabilities --------------------------------------------------------------------

    async def _capabilities(self, name: str, timeout_s: float | None = None) -> dict:
        """The model's capabilities (its backend's, asked once, cached), with the
        punctuation stage this app adds on top. Concurrent callers share one call; a
        failed call is asked again by the next caller."""
        cached = self._capabilities_cache.get(name)
        if cached is not None:
            return cached
        wait_s = self._options.settings.health_timeout_s if timeout_s is None else timeout_s
        return await asyncio.wait_for(asyncio.shield(self._capabilities_call(name)), wait_s)

    def _capabilities_call(self, name: str) -> asyncio.Task:
        call = self._capabilities_calls.get(name)
        if call is None or (call.done() and (call.cancelled() or call.exception() is not None)):
            call = asyncio.get_running_loop().create_task(self._fetch_capabilities(name))
            self._capabilities_calls[name] = call
        return call

    async def _fetch_capabilities(self, name: str) -> dict:
        caps = dict(await self._recognizers[name].capabilities.remote())
        stage = name in self._punctuators
        caps["punctuation_source"] = "model" if caps.get("punctuation") else None
        if stage and not caps.get("punctuation"):
            caps["punctuation"] = True
            caps["punctuation_source"] = "ct-transformer"
        # Diarization is the app's speaker stage, for every model (diarize=true).
        caps["diarization"] = bool(caps.get("diarization")) or self._service.can_diarize
        self._capabilities_cache[name] = caps
        return caps

    def _detects_language_call(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def detects_language() -> bool:
            # Asked at start, so normally cached; else wait for the one shared call as
            # long as a request may take: falling back would decode every segment with
            # its own language detection (a file's language would flip between segments).
            try:
                caps = await self._capabilities(
                    name, timeout_s=self._options.settings.request_timeout_s
                )
            except Exception as exc:
                logger.warning("capabilities of %s unknown (%r): per-segment language", name, exc)
                return False
            return bool(caps.get("language_detection"))

        return detects_language

    # -- stage calls: retries, deadlines, admission accounting ---------------------------

    def _vad_call(self, vad: DeploymentHandle) -> Callable[[np.ndarray], Awaitable[list]]:
        call = _remote_call(vad, "segments")
        policy = self._options.settings.retry

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
                # Silence costs the recognizer nothing: only speech stays queued (of
                # every channel of a split request: summed, not the last one's).
                speech_s = sum(seg.duration_ms for seg in segments) / 1000.0
                scope.ticket.shrink_to(scope.speech_found(speech_s))
                self._publish(scope.model)
            return segments

        return segment

    def _retried_call(self, handle: DeploymentHandle, method: str, stage: str):
        """``handle.method(item)``, sent again when its replica died (to another replica,
        or to the restarted one) within the item's ``deadline_unix_s``. Only for
        idempotent calls: a segment, an embedding window, a punctuation request."""
        call = _remote_call(handle, method)
        policy = self._options.settings.retry

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

    def _punctuate_call(self, name: str) -> PunctuateFn | None:
        handle = self._punctuators.get(name)
        if handle is None:
            return None
        return self._retried_call(handle, "punctuate", "punctuate")

    def _publish(self, model: str) -> None:
        controller = self._admission[model]
        tags = {"model": model}
        observability.admission_queued_audio_s().set(controller.queued_audio_s, tags=tags)
        observability.admission_drain_rate().set(controller.rate(), tags=tags)

    def _trim_heap(self) -> None:
        """Uploads and decoded audio are freed after each request: give the pages back
        to the OS now and then (serve_app.core.memory), off the event loop."""
        if self._trimmer is None:
            self._trimmer = HeapTrimmer()
        if self._trimmer.due():
            asyncio.get_running_loop().run_in_executor(None, self._trimmer.after_call)


# Serve's ASGI ingress with the app built late, in the replica, around the replica itself
# (``__serve_build_asgi_app__``, after the constructor): the routes are closures over this
# instance. ``@serve.ingress(app)`` with a module-level app would make them class-based
# views that find ``self`` through Serve's replica context, which no in-process test has.
@serve.deployment
@serve.ingress()
class AsrIngress(IngressServer):
    """The ingress deployment (``serve_app.online.app`` binds it as ``AsrIngress``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Every replica reports its drain state to the app's board, so a graceful stop
        # (serve_app.online.run) hears from each of them: a handle call would reach the
        # least-loaded replica, the one least likely to hold requests.
        context = serve.get_replica_context()
        self._drain_pusher = system.StatsPusher(
            app_name=context.app_name,
            model=system.INGRESS_KEY,
            replica_id=str(context.replica_id.unique_id),
            stats=self.drain_state,
            apply=lambda _settings: None,
            interval_s=0.5,
        ).start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.http_app()


async def _answer(response: Any) -> Any:
    """A handle call's answer; cancelled here (deadline, client disconnect), the replica's
    work is cancelled too (Serve only does that by itself for a disconnect of the parent
    HTTP request)."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


def _remote_call(handle: DeploymentHandle, method: str):
    bound = getattr(handle, method)

    async def call(arg):
        return await _answer(bound.remote(arg))

    return call


class _StreamHandle:
    """A streaming deployment (serve_app.online.deployments.streaming) called with the
    session as Serve's multiplexed model id: a session's calls go where its states are."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def step(self, call: StreamStep) -> StreamReply | None:
        handle = self._handle.options(multiplexed_model_id=call.session_id)
        return await _answer(handle.step.remote(call))

    def end(self, session_id: str, key: str) -> None:
        """Fire and forget: a lost end only leaves the state to the replica's LRU."""
        self._handle.options(multiplexed_model_id=session_id).end.remote(session_id, key)


def _count_retry(stage: str) -> Callable[[BaseException], None]:
    def record(exc: BaseException) -> None:
        observability.retries_total().inc(tags={"stage": stage, "kind": type(exc).__name__})

    return record
