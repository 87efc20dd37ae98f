"""scripts/fidelity.py: its pure parts, and a smoke run on a tiny corpus (real models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import fidelity
from tests.speech import requires_espeak


def test_dropped_sentences_by_alignment():
    sentences = ["the cat sat on the mat", "we shipped it last night", "see you soon"]
    assert fidelity.dropped_sentences(sentences, " ".join(sentences)) == []
    # The middle one lost, a word of the last one wrong: only the middle is dropped.
    hyp = "the cat sat on the mat see you moon"
    assert fidelity.dropped_sentences(sentences, hyp) == ["we shipped it last night"]
    assert fidelity.dropped_sentences(sentences, "") == sentences


def test_recordings_join_runs_of_one_source_with_each_pause():
    utt = [
        fidelity.Utterance(f"{voice}-{i:02d}", f"s{i}", np.ones(1600, np.float32))
        for voice in ("a", "b")
        for i in range(3)
    ]
    recs = fidelity.recordings(utt, [0.5, 1.0], per_recording=2)
    per_file = [r for r in recs if r.group == "per-file"]
    joined = [r for r in recs if r.group != "per-file"]
    assert len(per_file) == 6
    # Per source and pause: one run of two (a third file alone is not a joined recording).
    assert sorted(r.name for r in joined) == ["a-0-p0.5", "a-0-p1", "b-0-p0.5", "b-0-p1"]
    two = next(r for r in joined if r.name == "a-0-p1")
    assert two.sentences == ("s0", "s1") and len(two.samples) == 1600 * 2 + 16_000


@pytest.mark.slow
@requires_espeak
def test_fidelity_script_smoke(tmp_path, models_dir, capsys):
    out = tmp_path / "f.json"
    code = fidelity.main(
        [
            "--sentences", "2", "--voices", "en-us", "--pauses", "0.8",
            "--per-recording", "2", "--cache-dir", str(tmp_path), "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "library WER" in printed and "after WER" in printed and "joined p=0.8s" in printed
    figures = json.loads(out.read_text())["groups"]
    assert set(figures) == {"per-file", "joined p=0.8s"}
    for row in figures.values():
        assert set(row) == {"library", "before", "after"}
        assert all(0.0 <= v["wer"] <= 1.0 and v["sentences"] == 2 for v in row.values())
