"""scripts/stage_cost.py builds a valid app for each stage (its measurement is run by hand:
it starts its own Ray cluster; figures in README.md and docs/BENCHMARKS.md). Its run
against a served app is tests/serve/test_speakers_http.py's smoke test."""

from __future__ import annotations

from pathlib import Path

from scripts import stage_cost as script
from serve_app.config import AppConfig


def test_punctuation_app_is_valid(tmp_path: Path) -> None:
    config = AppConfig.model_validate(
        script.punctuation_app(str(tmp_path), tmp_path / "paraformer", tmp_path / "punc", 1)
    )
    (rec,) = config.recognizers
    assert rec.punctuation is not None and rec.punctuation.model == str(tmp_path / "punc")


def test_diarization_app_is_valid() -> None:
    config = AppConfig.model_validate(script.diarization_app(None, 2, 1))
    (rec,) = config.recognizers
    assert config.speakers is not None and config.speakers.backend == "ge2e"
    assert rec.name == "whisper-tiny.en" and rec.max_queue_wait_s == 3600
