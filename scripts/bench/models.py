"""The benchmarked models: the same files for every row."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import SCRIPTS

RANDOM_MODELS_DIR = Path("/tmp/rm")


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: the same files for every row."""

    name: str
    backend: str  # "funasr" | "whisper"
    path: str
    language: str | None = None

    @property
    def is_whisper(self) -> bool:
        return self.backend == "whisper"


def _models_dir() -> Path:
    from serve_app.config import resolve_models_dir

    return resolve_models_dir(None)


def _random_funasr_model(name: str) -> str:
    """A random-weight FunASR folder (``make_random_funasr_models.py``), made if missing.

    Looked up in ``<models dir>/random/`` (where this script generates it) and /tmp/rm.
    """
    for root in (_models_dir() / "random", RANDOM_MODELS_DIR):
        if (root / name / "model.pt").exists():
            return str(root / name)
    out = _models_dir() / "random"
    print(f"generating random-weight {name} into {out} ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "make_random_funasr_models.py"),
            "--out",
            str(out),
            "--models",
            name,
        ],
        check=True,
    )
    return str(out / name)


def resolve_model(name: str, overrides: dict[str, str]) -> ModelSpec:
    """Known names: paraformer-large, paraformer-tiny (random weights), whisper-tiny.en."""
    if name.startswith("paraformer"):
        path = overrides.get(name) or _random_funasr_model(name)
        return ModelSpec(name=name, backend="funasr", path=path)
    if name.startswith("whisper"):
        path = overrides.get(name) or str(_models_dir() / name)
        if not Path(path).is_dir():
            raise SystemExit(f"{path} missing: run scripts/provision_models.py")
        return ModelSpec(name=name, backend="whisper", path=path, language="en")
    raise SystemExit(f"unknown model {name!r} (paraformer-large, paraformer-tiny, whisper-tiny.en)")
