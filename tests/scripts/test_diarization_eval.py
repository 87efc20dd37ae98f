"""Smoke test of ``python -m scripts.diarization_eval``: one 2-voice conversation, real
GE2E weights.

The figures themselves come from the script (docs/BENCHMARKS.md, "Diarization"); here one
file must come out with the right speaker count and a DER far from chance, so a broken
front end, clustering or turn logic fails the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import diarization_eval
from tests.speech import have_espeak


@pytest.mark.slow
def test_eval_script_prints_figures_and_one_conversation_is_diarized(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    pytest.importorskip("pyannote.metrics")
    out = tmp_path / "figures.json"
    argv = ["--speakers", "2", "--files", "1", "--seed", "7", "--vad", "oracle", "--json", str(out)]
    assert diarization_eval.main([*argv, "--models-dir", str(models_dir)]) == 0
    printed = capsys.readouterr().out
    assert "DER" in printed and "RTFx" in printed
    report = json.loads(out.read_text())
    (row,) = report["results"]
    blind, given = row["count_not_given"], row["count_given"]
    assert blind["files"] == 1
    assert blind["count_right"] == 1.0
    # Chance for two alternating talkers is ~50 % confusion; the pipeline does far better.
    assert blind["der_collar0.5"] < 0.2
    assert given["der_collar0.5"] < 0.2
    assert 0.0 <= blind["der_collar0.0"] <= 1.0
