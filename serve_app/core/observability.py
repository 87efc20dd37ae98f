"""Prometheus metrics through Ray's metrics API (scraped from Ray's metrics endpoint).

Metric objects are created lazily inside the replica or actor that records them (Ray
metrics cannot be pickled). Every name carries its unit.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)

_LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
_BATCH_ITEMS_BOUNDARIES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128]
_BATCH_AUDIO_BOUNDARIES_S = [1, 5, 10, 30, 60, 120, 240, 480, 960]
_RATIO_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


class _Noop:
    def observe(self, *_a, **_k) -> None: ...
    def inc(self, *_a, **_k) -> None: ...
    def set(self, *_a, **_k) -> None: ...


def _metrics_module():
    try:
        from ray.serve import metrics

        return metrics
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return None


@functools.cache
def histogram(name: str, description: str, boundaries: tuple[float, ...], tag_keys=()):
    metrics = _metrics_module()
    if metrics is None:
        return _Noop()
    try:
        return metrics.Histogram(
            name, description=description, boundaries=list(boundaries), tag_keys=tag_keys
        )
    except Exception:
        logger.warning("metric %s unavailable: not exported", name, exc_info=True)
        return _Noop()


@functools.cache
def counter(name: str, description: str, tag_keys=()):
    metrics = _metrics_module()
    if metrics is None:
        return _Noop()
    try:
        return metrics.Counter(name, description=description, tag_keys=tag_keys)
    except Exception:
        logger.warning("metric %s unavailable: not exported", name, exc_info=True)
        return _Noop()


def stage_latency_s():
    return histogram(
        "asr_stage_latency_s",
        "Latency of one pipeline stage per request (decode, vad, recognize, total)",
        tuple(_LATENCY_BOUNDARIES_S),
        ("stage", "model"),
    )


def errors_total():
    return counter("asr_errors_total", "Failed requests or items by error kind", ("kind", "stage"))


def redecodes_total():
    return counter(
        "asr_redecodes_total",
        "Stretches decoded again because an item's decode missed speech or degenerated",
        ("model", "reason"),
    )


def retimed_items_total():
    return counter(
        "asr_retimed_items_total",
        "Items whose span times were implausible and re-timed from the speech",
        ("model", "reason"),
    )


def audio_processed_s():
    return counter("asr_audio_processed_s_total", "Seconds of audio transcribed", ("model",))


def batch_items():
    return histogram(
        "asr_batch_items",
        "Items (segments) per dynamic batch",
        tuple(_BATCH_ITEMS_BOUNDARIES),
        ("model",),
    )


def batch_audio_s():
    return histogram(
        "asr_batch_audio_s",
        "Seconds of audio per dynamic batch",
        tuple(_BATCH_AUDIO_BOUNDARIES_S),
        ("model",),
    )


def padding_efficiency():
    return histogram(
        "asr_padding_efficiency",
        "Real audio / padded audio of the forward passes of one batch",
        tuple(_RATIO_BOUNDARIES),
        ("model",),
    )


def queue_wait_s():
    return histogram(
        "asr_batch_queue_wait_s",
        "Time an item waited before its batch started",
        tuple(_LATENCY_BOUNDARIES_S),
        ("model",),
    )


def forward_s():
    return histogram(
        "asr_batch_forward_s",
        "Model time of one dynamic batch",
        tuple(_LATENCY_BOUNDARIES_S),
        ("model",),
    )


@functools.cache
def gauge(name: str, description: str, tag_keys=()):
    metrics = _metrics_module()
    if metrics is None:
        return _Noop()
    try:
        return metrics.Gauge(name, description=description, tag_keys=tag_keys)
    except Exception:
        logger.warning("metric %s unavailable: not exported", name, exc_info=True)
        return _Noop()


def live_sessions():
    return gauge(
        "asr_live_sessions",
        "Live websocket sessions open on this ingress replica",
        tag_keys=("protocol",),
    )


def live_early_finals_total():
    return counter(
        "asr_live_early_finals_total",
        "Live finals decoded at the end pad of silence: used (the turn ended there) or "
        "dropped (speech resumed, settings changed, the session ended)",
        ("outcome",),
    )


def admission_queued_audio_s():
    return gauge(
        "asr_admission_queued_audio_s",
        "Audio seconds an ingress replica admitted for a model and not yet got back",
        ("model",),
    )


def admission_drain_rate():
    return gauge(
        "asr_admission_drain_rate_audio_s_per_s",
        "Measured audio seconds per second a model's queue drains (as one ingress sees it)",
        ("model",),
    )


def admission_rejections_total():
    return counter(
        "asr_admission_rejections_total",
        "Requests answered 503 because their expected queue wait was too long",
        ("model", "stage"),
    )


def retries_total():
    return counter(
        "asr_retries_total",
        "Remote calls retried because their replica died or was unavailable",
        ("stage", "kind"),
    )


def deadline_drops_total():
    return counter(
        "asr_deadline_drops_total",
        "Segments dropped from a recognizer's queue before their forward pass "
        "(deadline passed or request cancelled)",
        ("model", "reason"),
    )


def cache_hits_total():
    return counter(
        "asr_cache_hits_total",
        "Transcription requests answered from the result cache (no VAD, no recognizer)",
        ("model",),
    )


def cache_misses_total():
    return counter(
        "asr_cache_misses_total",
        "Transcription requests that looked in the result cache and found nothing",
        ("model",),
    )


def cache_errors_total():
    return counter(
        "asr_cache_errors_total",
        "Result cache backend failures (read as a miss or a lost write, never a request error)",
        ("backend", "op"),
    )
