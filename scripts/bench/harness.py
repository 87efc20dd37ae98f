"""What the row workers share (they run in a child process, one per row): the corpus,
torch threads and GPU peak, warm-up audio, the Whisper model, HTTP load
(:func:`scripts.common.http.run_closed`), and a private Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from scripts.common.audio import read_files
from scripts.common.http import ClosedRun, run_closed
from serve_app.tools import corpus as bench_corpus
from serve_app.tools.models import ModelSpec


def _corpus(spec: dict) -> bench_corpus.Corpus:
    c = spec["corpus"]
    return bench_corpus.build_corpus(c["minutes"], root=Path(c["root"]), seed=c["seed"])


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _gpu_peak_mib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _quiet_funasr() -> contextlib.AbstractContextManager:
    """FunASR prints import notices and progress to stdout: keep the row's output clean."""
    return contextlib.redirect_stdout(sys.stderr)


def _noise_wav(tmp: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp / "warmup.wav"
    if not path.exists():
        rng = np.random.default_rng(0)
        sf.write(path, (rng.normal(0, 0.01, 32000)).astype("float32"), 16000)
    return path


def _whisper_model(spec: dict) -> Any:
    from faster_whisper import WhisperModel

    from serve_app.recognizers.whisper_backend import resolve_compute_type

    model = ModelSpec(**spec["model"])
    return WhisperModel(
        model.path,
        device=spec["device"],
        compute_type=resolve_compute_type(spec["precision"], spec["device"]),
        cpu_threads=spec["threads"] if spec["device"] == "cpu" else 0,
    )


def _http_load(url: str, corpus: bench_corpus.Corpus, spec: dict, model_field: str) -> ClosedRun:
    files = read_files([Path(f.path) for f in corpus.files])
    return asyncio.run(
        run_closed(
            url,
            files,
            concurrency=spec["concurrency"],
            form={"model": model_field},
            timeout_s=spec["request_timeout_s"],
        )
    )


def _start_ray(spec: dict, **extra: Any) -> Any:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env_vars = {"RAY_AUTH_MODE": "disabled", **extra.pop("env_vars", {})}
    runtime_env = {"env_vars": env_vars, **extra.pop("runtime_env", {})}
    ray.init(
        address="local",  # always a new cluster of our own, never someone else's
        num_cpus=spec["threads"],
        num_gpus=1 if spec["device"] == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=runtime_env,
    )
    return ray
