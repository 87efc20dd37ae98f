"""Row 5: this project's Ray Data job (``serve_app.batch.job.run_job``) over the
corpus manifest, on a Ray cluster of its own.
Timed: ``run_job()`` wall (actor start, model load, all files, Parquet write), and the
steady state from the first recognizer call to the end; batch sizes and padding from a
worker setup hook (``hook.py``) that logs every ``transcribe_batch``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from serve_app.tools.models import ModelSpec

from .harness import _corpus, _start_ray
from .hook import hook_env
from .measure import BatchRecord, CpuTimeline, format_roles, whisper_padded_s


def row_ray_data(spec: dict) -> dict:
    """Row 5: this project's Ray Data job (``run_job``) over the corpus manifest."""
    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    tmp = Path(spec["tmp"])
    stats_path = tmp / "batch-stats.jsonl"
    output = tmp / "job-output"
    config_path = tmp / "job.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump({"job": spec["job_config"]}, sort_keys=False))
    hook = hook_env(str(stats_path))
    hook["env_vars"].update(spec["job_env"])
    ray = _start_ray(spec, **hook)
    from serve_app.batch.config import load_job_config
    from serve_app.batch.job import run_job

    timeline = CpuTimeline()
    try:
        config = load_job_config(config_path)
        started = time.time()
        with timeline:
            summary = run_job(config, manifest=str(corpus.manifest), output=str(output))
    finally:
        ray.shutdown()
    if summary.failed or not summary.complete:
        raise RuntimeError(f"job incomplete: {summary.render()}")
    record = BatchRecord()
    first_call = None
    for line in stats_path.read_text().splitlines() if stats_path.exists() else []:
        entry = json.loads(line)
        first_call = entry["t0"] if first_call is None else min(first_call, entry["t0"])
        for size in entry["sizes"]:
            record.sizes[int(size)] += 1
        record.real_s += entry["real_s"]
        record.padded_s += entry["padded_s"]
    if model.is_whisper:
        record.padded_s = whisper_padded_s(sum(k * v for k, v in record.sizes.items()))
    steady_s = (started + summary.wall_s - first_call) if first_call else None
    cores = os.cpu_count() or 1
    cpu_core_s, window_s = timeline.breakdown()
    cpu_steady, steady_window_s = timeline.breakdown(first_call)
    cpu_notes = [
        f"CPU core-s by role, whole job ({window_s:.1f} s x {cores} cores): "
        + format_roles(cpu_core_s),
        f"CPU core-s by role, steady window ({steady_window_s:.1f} s x {cores} cores): "
        + format_roles(cpu_steady),
    ]
    return {
        "wall_s": summary.wall_s,
        "audio_s": summary.audio_s,
        "latencies_s": [],
        **record.summary(),
        "steady_wall_s": steady_s,
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
            *cpu_notes,
        ],
        "timing_scope": "run_job() wall (Ray already started)",
    }
