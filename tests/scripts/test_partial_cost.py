"""scripts/partial_cost.py at smoke size (the tiny random models): it prints both costs and
the state's size for each utterance length. Its figures (the large models) are in
docs/BENCHMARKS.md, "Live sessions"."""

from __future__ import annotations

import re

from scripts import partial_cost


def test_smoke_prints_both_costs_and_the_state_size(random_models_dir, capsys):
    code = partial_cost.main(
        [
            "--streaming", "paraformer-streaming-tiny",
            "--offline", "paraformer-tiny",
            "--models-dir", str(random_models_dir),
            "--seconds", "2", "3.2",
            "--interval-s", "0.8",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    rows = re.findall(
        r"(\d+\.\d) s utterance, round 0: (\d+) partials; core-ms per audio-s: "
        r"streaming (\d+), re-decode (\d+); streaming state ([\d.]+) MB pickled",
        out,
    )
    assert [(s, n) for s, n, *_ in rows] == [("2.0", "2"), ("3.2", "4")], out
    assert all(float(mb) > 0 for *_, mb in rows)
