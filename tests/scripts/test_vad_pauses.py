"""``python -m scripts.vad_pauses``, its smoke test: one espeak-ng voice, three sentences,
1.2 s pauses, clean and noisy, every VAD configuration of the default set."""

from __future__ import annotations

import json

import pytest

from scripts import vad_pauses
from tests.speech import requires_espeak

pytestmark = [requires_espeak, pytest.mark.slow]  # four VADs load (torch, ONNX, Silero)


def test_vad_pauses_scores_every_configuration(models_dir, tmp_path, capsys):
    out = tmp_path / "vad.json"
    argv = ["--voices", "en-us", "--sentences", "3", "--pauses", "1.2", "--no-human"]
    vad_pauses.main([*argv, "--models-dir", str(models_dir), "--json", str(out)])
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out
    labels = [label for label, _, _ in vad_pauses.CONFIGS["default"]]
    assert [r["config"] for r in results] == ["cap cuts", *labels]
    for result in results[1:]:
        assert result["cpu_s_per_h"] > 0 and f"== {result['config']}" in printed
        # One clean and one noisy recording; three sentences joined by two 1.2 s pauses.
        assert [row["recording"].count("+snr") for row in result["rows"]] == [0, 1]
        assert all(row["pauses"] == 2 for row in result["rows"]), result
        for row in result["rows"]:
            assert 0 <= row["lost_frames"] <= row["sounding_frames"] > 0
