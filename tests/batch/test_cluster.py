"""The job against a ``ray start --head`` cluster (``ray job submit``), a killed
recognizer actor, and retrying error rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from serve_app.batch.job import run_job
from serve_app.batch.stages import (
    resolve_audio_ref,
)
from tests.batch.helpers import (
    REPO,
    _good_rows,
    _manifest,
    _ray_workers,
    _test_config,
)


@pytest.mark.slow
def test_ray_job_submit_against_a_running_cluster(corpus, head_node, tmp_path):
    config = _test_config().model_dump(mode="json")
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump({"job": config}))
    rows = [corpus["rows"][0], corpus["rows"][-4]]  # one good file, one missing
    # Relative audio paths resolve against the manifest's folder: point them at the corpus.
    manifest = _manifest(
        tmp_path / "manifest.parquet",
        [{**r, "audio": resolve_audio_ref(r["audio"], str(corpus["root"]))} for r in rows],
    )
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        f"--address={head_node['address']}",
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "serve_app.batch.job",
        "--manifest",
        str(manifest),
        "--output",
        str(out),
        "--config",
        str(config_path),
        "--summary-json",
        str(summary),
    ]
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(
            cmd, env=head_node["env"], capture_output=True, text=True, timeout=400, cwd=REPO
        )
        # The dashboard answers before the node's job agent registers with it.
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "== transcription job summary ==" in result.stdout
    done = json.loads(summary.read_text())
    assert (done["files"], done["ok"], done["failed"], done["complete"]) == (2, 1, 1, True)
    table = pq.read_table(out).to_pylist()
    assert sorted((r["id"], r["status"]) for r in table) == sorted(
        [(rows[0]["id"], "ok"), ("missing", "error")]
    )


# -- fault tolerance and retrying error rows (real job) -------------------------------------


@pytest.mark.slow
def test_killed_recognizer_actor_loses_no_rows(corpus, ray_cluster, models_dir, tmp_path):
    rows = _good_rows(corpus)
    manifest = _manifest(corpus["root"] / "kill.parquet", rows)
    out = tmp_path / "out"
    # One file per recognizer call: many small tasks, so the kill lands mid-job.
    config = _test_config().model_copy(update={"files_per_recognizer_batch": 1})
    before = set(_ray_workers("RecognizeStage"))
    result: dict = {}

    def job() -> None:
        try:
            result["summary"] = run_job(config, manifest=str(manifest), output=str(out))
        except BaseException as exc:  # surfaced by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    killed, written_at_kill = None, None
    deadline = time.monotonic() + 900
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        # Kill once the recognizer has finished a batch (a part file exists), while the
        # other files are still to come.
        written = list(out.glob("*.parquet")) if out.exists() else []
        workers = set(_ray_workers("RecognizeStage")) - before
        if workers and written:
            killed = min(workers)
            os.kill(killed, signal.SIGKILL)
            written_at_kill = len(written)
        time.sleep(0.05)
    thread.join(timeout=900)
    assert not thread.is_alive(), "job did not finish"
    assert "error" not in result, result.get("error")
    assert killed is not None and written_at_kill is not None
    assert written_at_kill < len(rows), "the kill came after the job's last row"
    summary = result["summary"]
    # No rerun: this one run wrote every id exactly once, all ok.
    assert (summary.files, summary.skipped, summary.failed) == (len(rows), 0, 0)
    assert summary.complete and (summary.missing, summary.duplicates) == (0, 0)
    table = pq.read_table(out)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    assert set(table.column("status").to_pylist()) == {"ok"}
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert all(texts[i] for i in corpus["refs"])  # the spoken files have text


@pytest.mark.slow
def test_retry_errors_redoes_error_rows_in_place(corpus, ray_cluster, models_dir, tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    good = [r for r in _good_rows(corpus) if r["id"] in ("s0", "s1", "silence")]
    rows = [{**r, "audio": resolve_audio_ref(r["audio"], str(corpus["root"]))} for r in good]
    rows.append({"id": "late", "audio": str(root / "late.wav")})  # not there yet
    manifest = _manifest(tmp_path / "manifest.parquet", rows)
    out = tmp_path / "out"
    config = _test_config().model_copy(update={"min_rows_per_output_file": 100})
    first = run_job(config, manifest=str(manifest), output=str(out))
    assert (first.files, first.failed) == (4, 1) and first.complete
    before = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert before["late"]["error"].startswith("not_found: ")

    shutil.copy(corpus["root"] / "s2.wav", root / "late.wav")  # the file turns up
    plain = run_job(config, manifest=str(manifest), output=str(out))
    assert (plain.files, plain.skipped) == (0, 4)  # error rows count as done without the flag
    second = run_job(config, manifest=str(manifest), output=str(out), retry_errors=True)
    assert (second.retried, second.files, second.failed, second.skipped) == (1, 1, 0, 3)
    assert second.complete and (second.missing, second.duplicates, second.extra) == (0, 0, 0)
    after = pq.read_table(out)
    rows_after = {r["id"]: r for r in after.to_pylist()}
    assert after.num_rows == len(rows_after) == 4  # still exactly one row per id
    assert rows_after["late"]["status"] == "ok" and rows_after["late"]["text"]
    for row_id in ("s0", "s1", "silence"):  # the ok rows of the rewritten file are unchanged
        assert rows_after[row_id] == before[row_id]
    superseded = list((out / "_superseded").rglob("*.parquet"))
    assert superseded and not list(out.glob("_retry-*"))
    old = pq.read_table(superseded[0]).to_pylist()
    assert any(r["id"] == "late" and r["status"] == "error" for r in old)  # kept aside

    third = run_job(config, manifest=str(manifest), output=str(out), retry_errors=True)
    assert (third.retried, third.files, third.skipped) == (0, 0, 4) and third.complete
