"""``python -m scripts.soak``: its figures (unit), and a 20 s run against the served test
app that must write parseable CSVs, a summary and a PNG, with an RSS series for every
replica."""

from __future__ import annotations

import csv
import json
import math

import pytest

from scripts import soak
from scripts.common.http import Answer
from tests.speech import have_espeak


def test_slope_is_least_squares_in_mb_per_hour():
    times = [0.0, 30.0, 60.0, 90.0]
    assert soak.slope_mb_per_hour(times, [100.0, 100.5, 101.0, 101.5]) == pytest.approx(60.0)
    noisy = [100.0, 103.0, 99.0, 102.0]  # flat on average, one high early sample
    assert abs(soak.slope_mb_per_hour(times, noisy)) < abs((noisy[1] - noisy[0]) / 30 * 3600)
    assert math.isnan(soak.slope_mb_per_hour([5.0], [1.0]))


def test_floor_slope_follows_the_window_minima_not_the_peaks():
    # A working set that comes and goes (peaks of +500 MB every other sample) over a
    # flat floor, and the same over a floor rising 60 MB/h.
    times = [float(t) for t in range(0, 3601, 30)]
    flat = [(t, 700.0 + (500.0 if i % 2 else 0.0)) for i, t in enumerate(times)]
    rising = [(t, v + t / 60.0) for t, v in flat]
    assert soak.floor_slope_mb_per_hour(flat, 300) == pytest.approx(0.0, abs=1e-6)
    assert soak.floor_slope_mb_per_hour(rising, 300) == pytest.approx(60.0, rel=0.05)
    assert math.isnan(soak.floor_slope_mb_per_hour([], 300))
    # A tail window of two samples (both high) does not count.
    tail = [*flat, (3630.0, 1200.0), (3660.0, 1200.0)]
    assert soak.floor_slope_mb_per_hour(tail, 300) == pytest.approx(0.0, abs=1e-6)


def test_figures_per_process_and_window():
    samples = [
        (t, pid, name, base + rate * t)
        for pid, name, base, rate in ((1, "A", 100.0, 0.0), (2, "B", 200.0, 1 / 36))
        for t in range(0, 601, 30)
    ]
    figures = {p.process: p for p in soak.process_figures(samples, warmup_s=300)}
    assert figures["A"].slope_mb_per_h == pytest.approx(0.0, abs=1e-6)
    assert figures["B"].slope_mb_per_h == pytest.approx(100.0)
    assert figures["B"].samples == 21 and figures["B"].max_mb == pytest.approx(200 + 600 / 36)
    records = [Answer(t, t + lat, 200, 5.0, "short") for t, lat in ((1, 1.0), (2, 3.0), (12, 2.0))]
    records.append(Answer(13, 14, 503, 0.0, "long", "busy"))  # no Retry-After: a failure
    records.append(Answer(15, 15.1, 503, 0.0, "long", "busy", retry_after="2"))
    windows = soak.window_figures(records, window_s=10, duration_s=20)
    assert [(w.requests, w.errors, w.rejected) for w in windows] == [(2, 0, 0), (3, 1, 1)]
    assert windows[1].p95_s == pytest.approx(2.0)  # only ok requests count for latency
    summary = soak.summarize(
        url="u",
        clients=1,
        duration_s=20,
        sample_s=30,
        warmup_s=300,
        window_s=10,
        records=records,
        samples=samples,
        p95_drift_limit=1.5,
    )
    assert (summary.errors, summary.rejected, summary.ok) == (1, 1, 3)
    assert summary.max_slope_mb_per_h == pytest.approx(100.0)
    # B grows and one request failed; p95 went 2.9 -> 2.0 s (linear interpolation between
    # 1 and 3 s), which is no drift.
    assert windows[0].p95_s == pytest.approx(2.9)
    assert list(summary.passed.values()) == [False, False, False, True]
    assert summary.p95_drift == pytest.approx(2.0 / 2.9)


@pytest.mark.slow
def test_short_soak_writes_csv_png_and_figures(asr_url, tmp_path):
    """Against the served test app (Whisper tiny.en its default model): a soak of its own
    app would cost four more replica starts for the same checks."""
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    corpus = soak.make_corpus(tmp_path, num_short=2, num_long=1, long_max_s=20)
    assert [f.kind for f in corpus] == ["short", "short", "long"]
    assert 14 <= corpus[-1].duration_s <= 26
    summary, records, samples = soak.soak(
        url=asr_url,
        corpus=corpus,
        clients=2,
        duration_s=20,
        sample_s=5,
        warmup_s=5,
        window_s=10,
    )
    paths = soak.write_outputs(tmp_path / "out", summary, records, samples)

    with paths["rss"].open() as f:
        rss = list(csv.DictReader(f))
    names = {r["process"] for r in rss}
    for role in ("ProxyActor", "ServeController", "AsrIngress", "VadDeployment", "Recognizer"):
        assert any(role in n for n in names), (role, names)
    per_pid: dict[str, list[float]] = {}
    for r in rss:
        per_pid.setdefault(r["pid"], []).append(float(r["rss_mb"]))
        assert float(r["t_s"]) >= 0
    assert all(len(v) >= 3 and min(v) > 10 for v in per_pid.values())  # t=0, every 5 s, end

    with paths["requests"].open() as f:
        requests = list(csv.DictReader(f))
    assert len(requests) == summary.requests >= 2
    assert all(r["status"] == "200" for r in requests), requests[:3]
    assert all(float(r["latency_s"]) > 0 for r in requests)

    with paths["windows"].open() as f:
        windows = list(csv.DictReader(f))
    assert len(windows) == 2 and sum(int(w["requests"]) for w in windows) == len(requests)

    data = json.loads(paths["summary"].read_text())
    assert data["errors"] == 0 and data["requests"] == len(requests)
    assert {p["pid"] for p in data["processes"]} == {int(p) for p in per_pid}
    assert all(math.isfinite(p["slope_mb_per_h"]) for p in data["processes"])
    assert set(data["passed"]) and data["passed"]["0 errors"] is True

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(paths["plot"]).shape[0] > 100
    assert "MB/h" in soak.render(summary)
