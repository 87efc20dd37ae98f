"""The Serve application builder that ``ray_configs/*.yaml`` point at.

``serve run ray_configs/serve.yaml`` imports ``serve_app.online.app:build_app`` and calls it with
the config file's ``args``, which Serve validates against :class:`AppConfig` (the type
annotation) once. Each deployment receives only its own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from ray.serve import Application, Deployment

from serve_app.config import (
    AppConfig,
    CacheSettings,
    DeploymentSettings,
    DiarizationSettings,
    RecognizerSettings,
    resolve_models_dir,
)
from serve_app.core.types import RecognitionOptions
from serve_app.online.admission import AdmissionPolicy
from serve_app.online.cache import model_version
from serve_app.online.deployments.punctuation import PunctuationDeployment
from serve_app.online.deployments.recognizer import RecognizerDeployment
from serve_app.online.deployments.speakers import SpeakerDeployment
from serve_app.online.deployments.streaming import StreamingDeployment
from serve_app.online.deployments.vad import VadDeployment
from serve_app.online.ingress import AsrIngress, IngressOptions
from serve_app.online.placement import max_replicas
from serve_app.online.routing import ROUTER_CLASS, haproxy_enabled
from serve_app.punctuation.stage import punctuation_for


def build_app(args: AppConfig) -> Application:
    """Bind ingress -> VAD and ingress -> one recognizer deployment per served model."""
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    models_dir = str(resolve_models_dir(config.models_dir))
    vad = _deployment(VadDeployment).options(
        name="VadDeployment", **_serve_options(config.vad_deployment)
    )
    recognizer = _deployment(RecognizerDeployment)
    recognizers = {
        rec.name: recognizer.options(
            name=f"Recognizer-{rec.name}", **_serve_options(rec.deployment)
        ).bind(rec, models_dir)
        for rec in config.recognizers
    }
    options = IngressOptions(
        limits=config.audio,
        model_names=config.model_names(),
        default_model=config.default_model,
        default_options={
            rec.name: RecognitionOptions(language=rec.language, hotwords=rec.hotwords)
            for rec in config.recognizers
        },
        settings=config.ingress,
        pack_segments_ms={rec.name: rec.segment_pack_ms for rec in config.recognizers},
        redecode_rounds={rec.name: rec.redecode_rounds for rec in config.recognizers},
        items_in_flight={rec.name: items_in_flight(rec) for rec in config.recognizers},
        admission={
            rec.name: AdmissionPolicy(
                max_queue_wait_s=rec.max_queue_wait_s,
                initial_rate_audio_s_per_s=rec.initial_drain_rate_audio_s_per_s,
            )
            for rec in config.recognizers
        },
        cache=_cache_settings(config, models_dir),
        channels=config.channels,
        diarize_by_default=bool(config.speakers and config.speakers.diarize_by_default),
        diarization_settings=(config.speakers or DiarizationSettings()),
    )
    ingress_options = _serve_options(config.ingress.deployment)
    if haproxy_enabled():
        # Ray's HAProxy (``RAY_SERVE_ENABLE_HA_PROXY``) routes to the ingress itself and
        # refuses a custom router there; the stages behind it keep BalancedRouter.
        del ingress_options["request_router_config"]
    ingress = _deployment(AsrIngress).options(name="AsrIngress", **ingress_options)
    # The speaker-embedding stage exists only with a ``speakers`` section (diarization).
    speakers = None
    if config.speakers is not None:
        speakers = (
            _deployment(SpeakerDeployment)
            .options(name="SpeakerDeployment", **_serve_options(config.speakers.deployment))
            .bind(config.speakers, models_dir)
        )
    return ingress.bind(
        vad.bind(config.vad, models_dir),
        recognizers,
        options,
        speakers,
        punctuators=_punctuators(config, models_dir),
        streamers=_streamers(config, models_dir),
    )


# Items of one request on their way to a model at once, in forwards per replica: two
# (one running, one queued) keep every replica busy with one long file, and a short
# request's item waits in Serve's first-come-first-served router behind at most that many
# of a long one's (a 3 s file behind an hour's re-decode round: 70 s with every item sent
# at once, serve_app.online.service.ModelRoute.items_in_flight).
IN_FLIGHT_FORWARDS_PER_REPLICA = 2


def items_in_flight(rec: RecognizerSettings) -> int:
    deployment = rec.deployment
    per_replica = IN_FLIGHT_FORWARDS_PER_REPLICA * rec.batch.max_batch_items
    if deployment.max_ongoing_requests is not None:
        per_replica = min(per_replica, deployment.max_ongoing_requests)
    return per_replica * max(1, max_replicas(deployment))


def _streamers(config: AppConfig, models_dir: str) -> dict:
    """One streaming deployment per recognizer with a ``streaming`` section (live 2pass
    partials: serve_app.recognizers.funasr_streaming)."""
    return {
        rec.name: _deployment(StreamingDeployment)
        .options(name=f"Streaming-{rec.name}", **_serve_options(rec.streaming.deployment))
        .bind(rec.streaming, models_dir, rec.name)
        for rec in config.recognizers
        if rec.streaming is not None
    }


def _punctuators(config: AppConfig, models_dir: str) -> dict:
    """One punctuation deployment per recognizer with a ``punctuation`` section (skipped,
    with a warning, for a model that punctuates itself: serve_app.punctuation.stage)."""
    out = {}
    for rec in config.recognizers:
        settings = punctuation_for(rec, Path(models_dir))
        if settings is not None:
            out[rec.name] = (
                _deployment(PunctuationDeployment)
                .options(name=f"Punctuation-{rec.name}", **_serve_options(settings.deployment))
                .bind(settings, models_dir, rec.name)
            )
    return out


# Settings that change how a model is served, not what it answers (the cache's version).
_NOT_OUTPUT_SETTINGS = {
    "aliases",
    "deployment",
    "batch",
    "max_queue_wait_s",
    "initial_drain_rate_audio_s_per_s",
    "warmup",
    "cpu_threads",
}


def _cache_settings(config: AppConfig, models_dir: str) -> CacheSettings:
    """The ``cache`` section with every model's version: the config's, else its weights'
    identity with every setting that may change the output: the recognizer's own and the
    rest of the app's (VAD, speakers, punctuation: all but the ingress, the deployments'
    resources and the cache itself)."""
    if not config.cache.enabled:
        return config.cache
    shared = config.model_dump(
        mode="json",
        exclude={"recognizers", "ingress", "vad_deployment", "cache", "audio", "models_dir"},
    )
    versions = {}
    for rec in config.recognizers:
        own = rec.model_dump(mode="json", exclude=_NOT_OUTPUT_SETTINGS)
        versions[rec.name] = config.cache.model_versions.get(rec.name) or model_version(
            rec.model, models_dir, {"recognizer": own, "app": shared}
        )
    return config.cache.model_copy(update={"model_versions": versions})


def _serve_options(settings: DeploymentSettings) -> dict:
    """``Deployment.options`` of one deployment: its settings, routed by
    :class:`~serve_app.online.routing.BalancedRouter` (a burst of one request's items
    spread over the replicas, not piled on one)."""
    return {
        **settings.serve_options(),
        "request_router_config": {"request_router_class": ROUTER_CLASS},
    }


def _deployment(cls: object) -> Deployment:
    """``@serve.deployment`` made ``cls`` a Deployment; mypy still sees the class."""
    return cast(Deployment, cls)
