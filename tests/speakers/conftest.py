"""Fixtures for the speaker tests: the real GE2E encoder and a random-weight CAM++ folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.tools.random_models import write_models


@pytest.fixture(scope="session")
def ge2e(models_dir: Path):
    """The real GE2E encoder (weights unpacked from resemblyzer==0.1.4 by provisioning)."""
    from serve_app.speakers.ge2e import Ge2eEmbedder

    return Ge2eEmbedder.from_models_dir(models_dir)


@pytest.fixture(scope="session")
def campplus_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with ``campplus-random`` (architecture-faithful, random weights)."""
    out = tmp_path_factory.mktemp("campplus-random")
    write_models(["campplus-random"], out, seed=0)
    return out
