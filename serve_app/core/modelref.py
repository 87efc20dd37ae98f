"""Model references: a local folder, a name under the models directory, or a hub id."""

from __future__ import annotations

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


def is_local(model_ref: str, models_dir: Path | None) -> bool:
    return Path(resolve_model_ref(model_ref, models_dir)).is_dir()
