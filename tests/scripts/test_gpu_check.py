"""The prepared GPU check (``python -m scripts.gpu_check``) cannot rot before a GPU runs it.

The dry run (``--device cpu --tiny``) runs every row the GPU run will, on the tiny
random-weight models and a 12 s generated corpus, and must report every figure (or an
explicit reason); it checks that rows measure the same work as row c (same texts), that
the torch fbank matches FunASR's frontend, and that the simulated OOM split finishes every
item. It never checks how fast anything is: figures belong to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.gpu_check import cli, prepare
from scripts.gpu_check.rows import run_row

REPO = Path(__file__).resolve().parents[2]

PARAFORMER_ROWS = (
    "precision_probe",
    "a_generate_per_file",
    "b_generate_vad_batch_size_s",
    "c_batched_recognizer",
    "c_budget_sweep",
    "d_forward_floor",
    "e_time_split",
    "f_oom_split",
    "g_gpu_fbank",
    "g_overlap_prep",
)
SENSEVOICE_ROWS = (
    "precision_probe",
    "a_generate_per_file",
    "c_batched_recognizer",
    "d_forward_floor",
)
THROUGHPUT_ROWS = frozenset(
    {
        "a_generate_per_file",
        "b_generate_vad_batch_size_s",
        "c_batched_recognizer",
        "d_forward_floor",
        "g_gpu_fbank",
        "g_overlap_prep",
    }
)
# Log-mel features after CMVN are O(1..10); FunASR's frontend (kaldi-native-fbank or
# torchaudio, float32 FFT) and the batched torch fbank differ by float32 rounding, measured
# at about 1e-4. 1e-2 still catches any wrong window, bank, pre-emphasis or LFR index.
FBANK_TOLERANCE = 1e-2


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _run_check(tmp: Path, models_dir: Path, *extra: str) -> tuple[dict, str]:
    out = tmp / "gpu_check.json"
    cmd = [
        sys.executable,
        "-m",
        "scripts.gpu_check",
        "--device",
        "cpu",
        "--tiny",
        "--out",
        str(out),
        "--work-dir",
        str(tmp / "work"),
        "--vad-dir",
        str(models_dir / "fsmn-vad"),
        "--cpu-threads",
        "1",
        # Generous: on a loaded CI machine no row may be skipped for time.
        "--time-budget-s",
        "3600",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[dict, str]:
    return _run_check(tmp_path_factory.mktemp("gpu-check"), models_dir)


@pytest.mark.slow
@pytest.mark.gpu
def test_dry_run_reports_every_row_with_figures(dry_run: tuple[dict, str]) -> None:
    report, stdout = dry_run
    rows = report["rows"]
    expected = [("paraformer-tiny", r) for r in PARAFORMER_ROWS] + [
        ("sensevoice-tiny", r) for r in SENSEVOICE_ROWS
    ]
    assert sorted((r["model"], r["id"]) for r in rows) == sorted(expected)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["precision"] == "fp32"  # CPU: autocast fp16/bf16 is CUDA-only
        if row["id"] in THROUGHPUT_ROWS:
            for key in ("audio_s", "wall_s", "rtfx"):
                assert _positive(row[key]), (row["id"], key, row[key])
        assert row["id"] in stdout  # the markdown table has the row
    meta = report["meta"]
    assert meta["corpus"]["files"] >= 2 and 2.0 <= meta["corpus"]["min_s"] <= 5.0
    assert meta["segments"]["source"].startswith("FSMN-VAD")
    assert meta["segments"]["count"] >= 1


@pytest.mark.slow
@pytest.mark.gpu
def test_dry_run_rows_measure_the_same_work(dry_run: tuple[dict, str]) -> None:
    rows = {(r["model"], r["id"]): r for r in dry_run[0]["rows"]}
    for model in ("paraformer-tiny", "sensevoice-tiny"):
        # Same batches, the same CPU features: the floor must transcribe exactly as row c.
        assert rows[(model, "d_forward_floor")]["same_text_as_c"] == 1.0
    assert rows[("paraformer-tiny", "g_overlap_prep")]["same_text_as_c"] == 1.0
    gpu_fbank = rows[("paraformer-tiny", "g_gpu_fbank")]
    assert gpu_fbank["max_abs_diff"] < FBANK_TOLERANCE, gpu_fbank
    assert gpu_fbank["max_abs_ref"] > 0.1  # the features compared are not all zero

    sweep = rows[("paraformer-tiny", "c_budget_sweep")]
    budgets = [p["max_batch_audio_s"] for p in sweep["points"]]
    assert budgets and sweep["knee_max_batch_audio_s"] in budgets
    assert all(p["ok"] and _positive(p["rtfx"]) for p in sweep["points"])

    split = rows[("paraformer-tiny", "e_time_split")]
    for key in ("cpu_fbank_share_of_c", "gpu_idle_fraction_c"):
        assert 0.0 <= split[key] <= 1.0, (key, split[key])
    for key in ("decode_s", "cpu_fbank_s_in_c", "forward_s_floor", "fbank_cap_factor"):
        assert _positive(split[key]), (key, split[key])


@pytest.mark.slow
@pytest.mark.gpu
def test_dry_run_oom_split_finishes_every_item(dry_run: tuple[dict, str]) -> None:
    oom = next(r for r in dry_run[0]["rows"] if r["id"] == "f_oom_split")
    assert oom["simulated"] is True  # a real CUDA OOM needs the GPU run
    assert oom["oom_splits"] >= 1 and oom["oom_errors_seen"] >= 1
    assert oom["finished_items"] == oom["items"] and oom["all_finished"] is True
    assert max(oom["forward_sizes"]) == oom["items"]  # the whole batch was tried first


@pytest.mark.slow
@pytest.mark.gpu
def test_a_precision_that_fails_is_reported_and_rerun_in_fp32(
    tmp_path: Path, models_dir: Path
) -> None:
    """The GPU run asks for fp16 and bf16, which FunASR code may not survive (its own bf16
    flag leaves the input in fp32): every row must then say why, and each row id that never
    succeeded runs once more in fp32, so one scarce GPU run still brings back every figure.
    CPU autocast stands in for CUDA's here (a different cast policy: which rows fail may
    differ on the GPU; the reporting and the fallback are what is tested)."""
    report, _ = _run_check(
        tmp_path, models_dir, "--models", "paraformer", "--precision", "bf16", "--cpu-autocast"
    )
    rows = report["rows"]
    bf16 = {r["id"]: r for r in rows if r["precision"] == "bf16"}
    fallback = {r["id"]: r for r in rows if r.get("fallback")}
    assert set(bf16) == set(PARAFORMER_ROWS)
    for row_id, row in bf16.items():
        assert row["status"] in ("ok", "error", "skipped"), row
        if row["status"] != "ok":
            assert row["reason"], row
            if row_id != "precision_probe":
                assert fallback[row_id]["status"] == "ok", fallback.get(row_id)
                assert fallback[row_id]["precision"] == "fp32"
    assert all(bf16[i]["status"] != "ok" for i in fallback)  # reruns only what failed


# ---------------------------------------------------------------- pure parts (fast)


def test_corpus_is_deterministic_and_in_range() -> None:
    a = prepare.make_corpus(40.0, min_s=2.0, max_s=30.0, seed=3)
    b = prepare.make_corpus(40.0, min_s=2.0, max_s=30.0, seed=3)
    assert [f.wav_bytes for f in a] == [f.wav_bytes for f in b]
    assert sum(f.duration_s for f in a) >= 40.0
    assert all(2.0 <= f.duration_s <= 30.0 for f in a)
    other = prepare.make_corpus(40.0, min_s=2.0, max_s=30.0, seed=4)
    assert [f.wav_bytes for f in other] != [f.wav_bytes for f in a]


def test_tuned_batch_comes_from_the_gpu_configs() -> None:
    budget_s, items, source = prepare.tuned_batch("batch_paraformer_gpu.yaml")
    assert source == "ray_configs/batch_paraformer_gpu.yaml"
    assert budget_s > 0 and items >= 1
    assert prepare.tuned_batch("no-such-config.yaml")[2] == "built-in default"


def test_a_row_past_the_budget_is_skipped_with_a_reason() -> None:
    ctx = prepare.Context(
        args=None,
        budget=prepare.Budget(0.0),
        device="cpu",
        corpus=[],
        audio=[],
        decode_s=0.0,
        vad_dir=None,
        segments=[],
        segments_source="",
        vad_s=None,
    )

    def must_not_run() -> dict:
        raise AssertionError("ran past the budget")

    row = run_row(ctx, "c_batched_recognizer", "m", "fp16", 1.0, must_not_run)
    assert row["status"] == "skipped" and "time budget" in row["reason"]
    failing = prepare.Budget(3600.0)
    ctx.budget = failing
    row = run_row(ctx, "d_forward_floor", "m", "fp16", 1.0, lambda: 1 / 0)
    assert row["status"] == "error" and "ZeroDivisionError" in row["reason"]
    table = cli.markdown({"rows": ctx.rows})
    assert "| c_batched_recognizer | m | fp16 | skipped |" in table
    assert "| d_forward_floor | m | fp16 | error |" in table
