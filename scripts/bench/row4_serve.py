"""Row 4: this project's Ray Serve app (``serve_app.online.app:build_app``) under the same C
concurrent HTTP clients as row 3, on a Ray cluster of its own.
Timed: first request sent -> last response, the app up and warmed up; batch sizes from
``/v1/stats``; CPU core-seconds per role (recognizer replicas, VAD, ingress, proxy, Serve
controller, Ray system, the clients) over the timed window.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from scripts.common.http import stats_delta
from scripts.common.service import free_port, healthy, wait_until
from serve_app.tools.models import ModelSpec

from .harness import _corpus, _http_load, _noise_wav, _start_ray
from .measure import cpu_breakdown, cpu_by_process, format_roles, whisper_padded_s


def row_serve(spec: dict) -> dict:
    """Row 4: this project's Serve app (``build_app``) under C concurrent HTTP clients."""
    import httpx

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    ray = _start_ray(spec)
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app

    serve_config = spec["serve_config"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = AppConfig.model_validate(serve_config)
        serve.run(build_app(config), name="bench", route_prefix="/", blocking=False)
        wait_until(lambda: healthy(url), spec["startup_timeout_s"], "the app")
        warm = _noise_wav(Path(spec["tmp"]))
        # Warm-up through the whole path (ingress, VAD, recognizer), not timed.
        for _ in range(2):
            httpx.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": ("w.wav", warm.read_bytes(), "audio/wav")},
                data={"model": model.name},
                timeout=spec["startup_timeout_s"],
            ).raise_for_status()
        cpu_before = cpu_by_process()
        result = _http_load(url, corpus, spec, model.name)
        cpu_core_s = cpu_breakdown(cpu_before, cpu_by_process())
        stats = stats_delta(result.before, result.after, model.name)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    if result.errors:
        raise RuntimeError(f"serve errors: {result.errors[:3]}")
    counts = {str(k): v for k, v in stats["batch_size_counts"].items()}
    real_s = result.after[model.name]["audio_s"] - result.before[model.name]["audio_s"]
    items = sum(int(k) * v for k, v in counts.items())
    padding = stats["padding_efficiency"]
    if model.is_whisper and items:
        padding = real_s / whisper_padded_s(items)
    return {
        "wall_s": result.wall_s,
        "audio_s": result.audio_s,
        "latencies_s": result.latencies,
        "batch_size_counts": counts,
        "padding_efficiency": round(padding, 4) if padding == padding else None,
        "recognizer_busy_s": stats["recognizer_busy_s"],
        "speech_s": real_s,
        "cpu_core_s": cpu_core_s,
        "notes": [
            "batch sizes: items per dynamic batch (/v1/stats)",
            "CPU core-seconds in the timed window: " + format_roles(cpu_core_s),
        ],
        "timing_scope": "first request sent -> last response (app up, warmed up)",
    }
