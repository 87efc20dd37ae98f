"""The rows behind a server or a cluster: funasr-server (3), this project's Serve app (4)
and Ray Data job (5), each on its own processes, shut down after."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.common.http import stats_delta
from scripts.common.service import free_port, healthy, wait_until
from serve_app.tools.models import ModelSpec

from .harness import WHISPER_WINDOW_S, corpus_of, http_load, start_ray, warm_up
from .hook import hook_env
from .measure import BatchRecord, CpuTimeline, cpu_breakdown, cpu_by_process, format_roles

HTTP_SCOPE = "first request sent -> last response (server up, warmed up)"


def funasr_server_row(spec: dict) -> dict:
    """Row 3: FunASR's OpenAI-compatible ``funasr-server`` on the same model files, under
    the C HTTP clients (FunASR models only: it cannot serve CTranslate2)."""
    model = ModelSpec(**spec["model"])
    tmp = Path(spec["tmp"])
    # Its VAD pipeline asks for "fsmn-vad" by hub name; FunASR resolves it to this
    # ModelScope id and skips the download when that path exists relative to the working
    # directory (download_from_ms), so the server runs offline from our fsmn-vad files.
    cwd = tmp / "funasr-server-cwd"
    vad_dir = cwd / "iic" / "speech_fsmn_vad_zh-cn-16k-common-pytorch"
    vad_dir.parent.mkdir(parents=True, exist_ok=True)
    if not vad_dir.exists():
        vad_dir.symlink_to(spec["vad_path"], target_is_directory=True)
    port = free_port()
    exe = shutil.which("funasr-server", path=str(Path(sys.executable).parent)) or "funasr-server"
    cmd = [exe, "--host", "127.0.0.1", "--port", str(port), "--device", spec["device"],
           "--model-path", model.path]  # fmt: skip
    env = {**os.environ, "MODELSCOPE_CACHE": str(cwd / "ms-cache")}
    url = f"http://127.0.0.1:{port}"
    # With --model-path the server answers model "custom" WITHOUT VAD (one forward over the
    # whole file); the model field "sensevoice" selects its VAD config (fsmn-vad, 30 s
    # segments) with --model-path's weights: its own long-audio path, as rows 2 and 4.
    with open(tmp / "funasr-server.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"funasr-server exited with {proc.returncode}")
                return healthy(url, "/health")

            wait_until(up, spec["startup_timeout_s"], "funasr-server")
            warm_up(url, spec, "sensevoice")
            result = http_load(url, spec, "sensevoice")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if result.errors:
        raise RuntimeError(f"funasr-server errors: {result.errors[:3]}")
    return {
        "wall_s": result.wall_s,
        "audio_s": corpus_of(spec).total_s,
        "latencies_s": result.latencies,
        "batch_size_counts": None,
        "padding_efficiency": None,
        "notes": [
            "funasr-server --model-path <same folder>, model field 'sensevoice' = its VAD path",
            "it calls AutoModel.generate(batch_size=1) inside an async handler: requests run "
            "one at a time; on CPU AutoModel also disables batch_size_s",
            "AutoModel's default ncpu=4 torch threads (not settable from the CLI)",
        ],
        "timing_scope": HTTP_SCOPE,
    }


def serve_row(spec: dict) -> dict:
    """Row 4: this project's Serve app (``build_app``) under the same C HTTP clients; batch
    sizes from ``/v1/stats``; CPU core-seconds per role over the timed window."""
    model = ModelSpec(**spec["model"])
    ray = start_ray(spec)
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(AppConfig.model_validate(spec["serve_config"]))
        serve.run(app, name="bench", route_prefix="/", blocking=False)
        wait_until(lambda: healthy(url), spec["startup_timeout_s"], "the app")
        warm_up(url, spec, model.name, times=2)
        cpu_before = cpu_by_process()
        result = http_load(url, spec, model.name)
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
        padding = real_s / (WHISPER_WINDOW_S * items)
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
        "timing_scope": HTTP_SCOPE,
    }


def ray_data_row(spec: dict) -> dict:
    """Row 5: this project's Ray Data job (``run_job``) over the corpus manifest. Timed:
    ``run_job()`` wall (actor start, model load, all files, Parquet write), and the steady
    state from the first recognizer call on; batch sizes from the worker setup hook
    (``hook.py``) that logs every ``transcribe_batch``."""
    import yaml

    model = ModelSpec(**spec["model"])
    corpus = corpus_of(spec)
    tmp = Path(spec["tmp"])
    stats_path, config_path = tmp / "batch-stats.jsonl", tmp / "job.yaml"
    config_path.write_text(yaml.safe_dump({"job": spec["job_config"]}, sort_keys=False))
    hook = hook_env(str(stats_path))
    hook["env_vars"].update(spec["job_env"])
    ray = start_ray(spec, **hook)
    from serve_app.batch.config import load_job_config
    from serve_app.batch.job import run_job

    timeline = CpuTimeline()
    try:
        config = load_job_config(config_path)
        started = time.time()
        with timeline:
            summary = run_job(config, manifest=str(corpus.manifest), output=str(tmp / "out"))
    finally:
        ray.shutdown()
    if summary.failed or not summary.complete:
        raise RuntimeError(f"job incomplete: {summary.render()}")
    record = BatchRecord()
    first_call = None
    for line in stats_path.read_text().splitlines() if stats_path.exists() else []:
        entry = json.loads(line)
        first_call = min(first_call or entry["t0"], entry["t0"])
        for size in entry["sizes"]:
            record.add(size, 0.0, 0.0)
        record.real_s += entry["real_s"]
        record.padded_s += entry["padded_s"]
    if model.is_whisper:
        record.padded_s = WHISPER_WINDOW_S * sum(k * v for k, v in record.sizes.items())
    cores = os.cpu_count() or 1
    cpu_core_s, window_s = timeline.breakdown()
    cpu_steady, steady_window_s = timeline.breakdown(first_call)
    return {
        "wall_s": summary.wall_s,
        "audio_s": summary.audio_s,
        "latencies_s": [],
        **record.summary(),
        "steady_wall_s": (started + summary.wall_s - first_call) if first_call else None,
        "speech_s": record.real_s,
        "config_cli": (
            "python -m serve_app.batch.job --manifest "
            f"{corpus.manifest} --output OUT --config {config_path.name}"
        ),
        "cpu_core_s": cpu_core_s,
        "cpu_core_s_steady": cpu_steady,
        "notes": [
            "wall = run_job(): actor start + model load + warm-up + all files + Parquet write",
            "steady = first recognizer call -> end (excludes actor start and model load)",
            f"CPU core-s by role, whole job ({window_s:.1f} s x {cores} cores): "
            + format_roles(cpu_core_s),
            f"CPU core-s by role, steady window ({steady_window_s:.1f} s x {cores} cores): "
            + format_roles(cpu_steady),
        ],
        "timing_scope": "run_job() wall (Ray already started)",
    }
