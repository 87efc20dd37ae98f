"""What the rows share (each runs in a child process of its own): the row names, the
corpus, torch threads and GPU peak, warm-up audio, the HTTP load
(:func:`scripts.common.http.run_closed`) and a private Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from scripts.common.audio import read_files
from scripts.common.http import ClosedRun, run_closed
from scripts.common.service import RAY_ENV
from serve_app.tools import corpus as bench_corpus

ROW_TITLES = {
    "1": "library, one file at a time",
    "2": "library's own batching",
    "3": "funasr-server (C clients)",
    "4": "this project: Ray Serve (C clients)",
    "5": "this project: Ray Data job",
    "6": "floor: forward on sorted batches",
    "7": "funasr-onnx, one segment at a time",
    "8": "funasr-onnx, its own batch_size",
}
# A row id with a suffix runs on ONNX Runtime (runtime: onnx) at that precision: "6q" is
# the floor on the int8 graph. Rows 7 and 8 (the funasr-onnx package) exist only so.
ONNX_SUFFIXES = {"o": "fp32", "q": "int8"}
ONNX_ROWS = ("4", "5", "6", "7", "8")
ROWS = (*"123456", *(r + s for r in ONNX_ROWS[2:] + ONNX_ROWS[:2] for s in ONNX_SUFFIXES))
FUNASR_ONNX = "funasr-onnx==0.4.3"  # rows 7, 8: pip install funasr-onnx==0.4.3 --no-deps


def split_row(row: str) -> tuple[str, str | None]:
    """``"6q"`` -> ``("6", "int8")``; a torch row -> ``(row, None)``."""
    if row[-1:] in ONNX_SUFFIXES:
        return row[:-1], ONNX_SUFFIXES[row[-1]]
    return row, None


def row_title(row: str) -> str:
    base, onnx = split_row(row)
    return f"{row} {ROW_TITLES[base]}" + (f" [ONNX {onnx}]" if onnx else "")


WHISPER_WINDOW_S = 30.0  # Whisper computes every item as a whole 30 s window


def corpus_of(spec: dict) -> bench_corpus.Corpus:
    c = spec["corpus"]
    return bench_corpus.build_corpus(c["minutes"], root=Path(c["root"]), seed=c["seed"])


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def gpu_peak_mib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def quiet_funasr() -> contextlib.AbstractContextManager:
    """FunASR prints import notices and progress to stdout: keep the row's output clean."""
    return contextlib.redirect_stdout(sys.stderr)


def noise_wav(tmp: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp / "warmup.wav"
    if not path.exists():
        rng = np.random.default_rng(0)
        sf.write(path, (rng.normal(0, 0.01, 32000)).astype("float32"), 16000)
    return path


def warm_up(url: str, spec: dict, model_field: str, times: int = 1) -> None:
    """Posts of the warm-up audio through the whole path, not timed."""
    import httpx

    data = noise_wav(Path(spec["tmp"])).read_bytes()
    for _ in range(times):
        httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("w.wav", data, "audio/wav")},
            data={"model": model_field},
            timeout=spec["startup_timeout_s"],
        ).raise_for_status()


def http_load(url: str, spec: dict, model_field: str) -> ClosedRun:
    files = read_files([Path(f.path) for f in corpus_of(spec).files])
    return asyncio.run(
        run_closed(
            url,
            files,
            concurrency=spec["concurrency"],
            form={"model": model_field},
            timeout_s=spec["request_timeout_s"],
        )
    )


def start_ray(spec: dict, **extra: Any) -> Any:
    """A new cluster of this process's own (never someone else's), sized to the row."""
    import ray

    for key, value in {**RAY_ENV, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(key, value)
    env_vars = {"RAY_AUTH_MODE": "disabled", **extra.pop("env_vars", {})}
    ray.init(
        address="local",
        num_cpus=spec["threads"],
        num_gpus=1 if spec["device"] == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env_vars, **extra.pop("runtime_env", {})},
    )
    return ray
