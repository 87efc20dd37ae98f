"""``python -m scripts.loadgen``, its smoke test: two clients, two one-sentence files,
against the suite's app (already serving): every file answered, the figures printed."""

from __future__ import annotations

import json

import pytest

from scripts import loadgen
from tests.speech import requires_espeak

pytestmark = [requires_espeak, pytest.mark.slow]  # a Serve app (shared with tests/serve)


def test_loadgen_answers_every_file_and_prints_its_figures(asr_url, capsys):
    argv = ["--url", asr_url, "--model", "whisper-tiny.en", "--concurrency", "2"]
    code = loadgen.main([*argv, "--files", "2", "--sentences-per-file", "1", "--json"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0
    assert summary["requests"] == summary["corpus_files"] == 2 and summary["errors"] == 0, out
    assert summary["rtfx"] > 0 and summary["latency_p95_s"] >= summary["latency_p50_s"] > 0
    # The recognizer's own statistics over the run (/v1/stats): both files' items batched.
    assert sum(summary["batch_size_counts"].values()) >= 1, summary
    assert 0 <= summary["wer"] < 1, out  # the text came back (espeak: known words)
    for name in ("RTFx=", "latency p50=", "batch sizes", "WER="):
        assert name in out
