"""scripts/punctuation_cost.py builds a valid app (its measurement is run by hand: it
starts its own Ray cluster; figures in the README/closing note)."""

from __future__ import annotations

from pathlib import Path

from scripts import punctuation_cost as script
from serve_app.config import AppConfig


def test_cost_script_config_is_valid(tmp_path: Path) -> None:
    config = AppConfig.model_validate(
        script.app_config(tmp_path, tmp_path / "paraformer", tmp_path / "punc", 1)
    )
    (rec,) = config.recognizers
    assert rec.punctuation is not None and rec.punctuation.model == str(tmp_path / "punc")
