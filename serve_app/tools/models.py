"""The models the batch tuner (and the benchmark, ``python -m scripts.bench``) measure, by
name: the same files for every measurement."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from serve_app.config import resolve_models_dir

RANDOM_MODELS_DIR = Path("/tmp/rm")


@dataclass(frozen=True)
class ModelSpec:
    """One measured model: a name, its backend and its folder."""

    name: str
    backend: str  # "funasr" | "whisper"
    path: str
    language: str | None = None

    @property
    def is_whisper(self) -> bool:
        return self.backend == "whisper"


def models_dir() -> Path:
    return resolve_models_dir(None)


def _random_funasr_model(name: str) -> str:
    """A random-weight FunASR folder (:mod:`serve_app.tools.random_models`), made if missing.

    Looked up in ``<models dir>/random/`` (where it is generated) and /tmp/rm.
    """
    for root in (models_dir() / "random", RANDOM_MODELS_DIR):
        if (root / name / "model.pt").exists():
            return str(root / name)
    out = models_dir() / "random"
    print(f"generating random-weight {name} into {out} ...", flush=True)
    # A process of its own: FunASR and the built model stay out of the measuring process.
    cmd = [sys.executable, "-m", "serve_app.tools.random_models", "--out", str(out)]
    subprocess.run([*cmd, "--models", name], check=True)
    return str(out / name)


def resolve_model(name: str, overrides: dict[str, str]) -> ModelSpec:
    """Known names: paraformer-large, paraformer-tiny, sensevoice-small, sensevoice-tiny
    (random weights unless ``overrides`` names a folder), whisper-tiny.en."""
    if name.startswith(("paraformer", "sensevoice")):
        path = overrides.get(name) or _random_funasr_model(name)
        return ModelSpec(name=name, backend="funasr", path=path)
    if name.startswith("whisper"):
        path = overrides.get(name) or str(models_dir() / name)
        if not Path(path).is_dir():
            raise SystemExit(f"{path} missing: run python -m serve_app.tools.provision_models")
        return ModelSpec(name=name, backend="whisper", path=path, language="en")
    raise SystemExit(
        f"unknown model {name!r} (paraformer-large, paraformer-tiny, sensevoice-small, "
        "sensevoice-tiny, whisper-tiny.en)"
    )


def default_precision(model: ModelSpec, device: str, precision: str | None) -> str:
    """``precision`` if given, else fp16 on CUDA, int8 (Whisper) or fp32 (FunASR) on CPU."""
    if precision:
        return precision
    if device == "cuda":
        return "fp16"
    return "int8" if model.is_whisper else "fp32"
