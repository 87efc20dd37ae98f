"""Model references: a local folder, a name under the models directory, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_model_ref(model_ref: str, models_dir: Path | None) -> str:
    """An existing folder wins; then ``models_dir/model_ref``; else ``model_ref`` unchanged
    (a hub id, which the backend downloads where a hub is reachable)."""
    path = Path(model_ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if models_dir is not None and (models_dir / model_ref).is_dir():
        return str((models_dir / model_ref).resolve())
    return model_ref


# Set any of these (1/true/yes/on) and no backend downloads a model: a name that is not a
# local folder fails at once, naming the places tried. HF_HUB_OFFLINE is Hugging Face's own.
OFFLINE_ENV_VARS = ("ASR_OFFLINE", "FUNASR_OFFLINE", "HF_HUB_OFFLINE")


def downloads_disabled() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in OFFLINE_ENV_VARS
    )


def is_local(model_ref: str, models_dir: Path | None) -> bool:
    return Path(resolve_model_ref(model_ref, models_dir)).is_dir()


# Intra-op threads of every model whose config leaves ``cpu_threads`` at 0 (the library
# default): one knob for a whole node or test run (the suite runs at 1 and 2 threads).
CPU_THREADS_ENV = "ASR_CPU_THREADS"


def model_cpu_threads(configured: int) -> int:
    """``configured``, else ``$ASR_CPU_THREADS``, else 0 (the library's own default)."""
    if configured:
        return configured
    value = os.environ.get(CPU_THREADS_ENV, "").strip()
    if not value:
        return 0
    threads = int(value)
    if threads < 0:
        raise ValueError(f"{CPU_THREADS_ENV} must be >= 0, got {value!r}")
    return threads


ONNX_CACHE_DIR_ENV = "ASR_ONNX_CACHE_DIR"


def onnx_cache_dir() -> Path:
    """Where derived ONNX files (exports, quantized graphs) are cached, keyed by the weights'
    identity: ``$ASR_ONNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/ray-funasr-serve/onnx``. Never
    the weights folder, which may be read-only and whose file list is the result cache's
    model identity."""
    if os.environ.get(ONNX_CACHE_DIR_ENV):
        return Path(os.environ[ONNX_CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ray-funasr-serve" / "onnx"
