"""Job configs, manifests, the output directory's resume state and error-row retries
(no Ray), and the manifest tool."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from serve_app.batch.config import ActorPoolSettings, JobConfig, load_job_config
from serve_app.batch.io import (
    ManifestError,
    OutputDirError,
    _run_filenames,
    commit_retry,
    error_rows_by_file,
    inspect_manifest,
    scan_output,
)
from serve_app.batch.job import _pool_args, pending_manifest_blocks
from serve_app.batch.stages import (
    OUTPUT_SCHEMA,
    table_from_rows,
)
from serve_app.config import load_app_config
from tests.batch.helpers import (
    CONFIG_DIR,
    _manifest,
    _rows,
)

# -- unit: config, manifest, resume state ---------------------------------------------------


JOB_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "job" in yaml.safe_load(p.read_text()))


def test_job_configs_load():
    names = {p.name for p in JOB_CONFIGS}
    assert {"batch_cpu.yaml", "batch_paraformer_gpu.yaml"} <= names
    gpu = load_job_config(CONFIG_DIR / "batch_paraformer_gpu.yaml")
    assert gpu.recognizer.device == "cuda" and gpu.recognizer.precision == "fp16"
    assert gpu.recognizer_pool.num_gpus == 1
    assert gpu.recognizer.model.startswith("iic/speech_seaco_paraformer_large")
    assert not gpu.preserve_order


def test_batch_cpu_config_matches_the_online_default():
    """Same model sections as serve.yaml: the same file gives the same transcript."""
    job = load_job_config(CONFIG_DIR / "batch_cpu.yaml")
    online = load_app_config(CONFIG_DIR / "serve.yaml")
    served = online.recognizer(job.recognizer.name)
    assert job.vad == online.vad
    for key in ("backend", "model", "device", "precision", "language", "hotwords", "beam_size"):
        assert getattr(job.recognizer, key) == getattr(served, key), key
    assert job.models_dir == online.models_dir


def test_job_config_validation(tmp_path):
    base = load_job_config(CONFIG_DIR / "batch_cpu.yaml").model_dump()
    with pytest.raises(ValidationError):
        JobConfig.model_validate({**base, "typo": 1})
    with pytest.raises(ValidationError, match="num_gpus"):
        JobConfig.model_validate(
            {**base, "recognizer": {**base["recognizer"], "device": "cuda", "precision": "fp16"}}
        )
    with pytest.raises(ValidationError, match="max_size"):
        ActorPoolSettings(min_size=3, max_size=2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"applications": []}))
    with pytest.raises(ValueError, match="job"):
        load_job_config(path)


def test_manifest_ids_must_be_unique_and_present(tmp_path):
    rows = [{"id": "a", "audio": "x"}, {"id": "b", "audio": "y"}, {"id": "a", "audio": "z"}]
    with pytest.raises(ManifestError, match="repeats 1 id"):
        inspect_manifest(str(_manifest(tmp_path / "dup.parquet", rows)))
    with pytest.raises(ManifestError, match="null or empty"):
        inspect_manifest(str(_manifest(tmp_path / "e.parquet", [{"id": "", "audio": "x"}])))
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "noaudio.parquet")
    with pytest.raises(ManifestError, match="audio"):
        inspect_manifest(str(tmp_path / "noaudio.parquet"))
    info = inspect_manifest(str(_manifest(tmp_path / "ok.parquet", rows[:2])))
    assert info.columns == ("id", "audio", "language")
    assert info.base_dir == str(tmp_path)
    blocks = pending_manifest_blocks(info, pa.array(["a"]), rows_per_block=1)
    assert [b.column("id").to_pylist() for b in blocks] == [["b"]]


def test_scan_output_quarantines_partial_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(
        table_from_rows([{"id": "a", "status": "ok", "model": "m"}], OUTPUT_SCHEMA),
        out / "part-1.parquet",
    )
    good = (out / "part-1.parquet").read_bytes()
    (out / "part-2.parquet").write_bytes(good[: len(good) // 2])  # killed mid-write
    (out / "_summary.json").write_text("{}")
    scan = scan_output(str(out))
    assert scan.ids.to_pylist() == ["a"]
    assert [Path(p).name for p in scan.quarantined] == ["part-2.parquet.corrupt"]
    assert not (out / "part-2.parquet").exists()
    assert (out / "_quarantine" / "part-2.parquet.corrupt").exists()
    assert scan_output(str(tmp_path / "absent")).ids.to_pylist() == []
    pq.write_table(pa.table({"x": [1]}), out / "foreign.parquet")
    with pytest.raises(OutputDirError, match="did not write"):
        scan_output(str(out))
    assert (out / "foreign.parquet").exists()  # never quarantined: not ours


def test_write_filenames_are_deterministic_per_task():
    # A retried write task rewrites its own file instead of adding a second copy.
    names = _run_filenames("run1")
    assert names.get_filename_for_task("u", 3) == names.get_filename_for_task("u", 3)
    assert names.get_filename_for_task("u", 3) != names.get_filename_for_task("u", 4)
    assert names.get_filename_for_task("u", 3).startswith("part-run1-")


def test_actor_pools_restart_dead_actors_and_retry_their_batches():
    import ray.data
    from ray.data._internal.execution.operators.actor_pool_map_operator import (
        ActorPoolMapOperator,
    )

    # The default pool settings rely on Ray Data's own defaults (no deprecated remote
    # args): check that this Ray still restarts pool actors and retries their batches.
    applied = ActorPoolMapOperator._apply_default_remote_args({}, ray.data.DataContext())
    assert (applied["max_restarts"], applied["max_task_retries"]) == (-1, -1)
    pool = ActorPoolSettings(min_size=1, max_size=2, num_cpus=1)
    assert (pool.max_restarts, pool.max_task_retries) == (-1, -1)
    assert "max_restarts" not in _pool_args(pool)
    limited = _pool_args(ActorPoolSettings(max_restarts=3, max_task_retries=5))
    assert (limited["max_restarts"], limited["max_task_retries"]) == (3, 5)
    with pytest.raises(ValidationError, match="max_task_retries needs max_restarts"):
        ActorPoolSettings(max_restarts=0)
    assert _pool_args(ActorPoolSettings(max_restarts=0, max_task_retries=0))["max_restarts"] == 0


def test_calls_in_flight_per_actor_reach_ray_data():
    # Default: Ray Data's own (2 per actor); 1 hands an actor a call only when it is free.
    assert _pool_args(ActorPoolSettings())["compute"].max_tasks_in_flight_per_actor is None
    one = _pool_args(ActorPoolSettings(max_tasks_in_flight_per_actor=1))["compute"]
    assert one.max_tasks_in_flight_per_actor == 1
    with pytest.raises(ValidationError):
        ActorPoolSettings(max_tasks_in_flight_per_actor=0)


def test_commit_retry_replaces_error_rows_and_keeps_one_row_per_id(tmp_path):
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(_rows(("a", "ok"), ("b", "error"), ("c", "error")), out / "part-old-1.parquet")
    pq.write_table(_rows(("d", "ok")), out / "part-old-2.parquet")
    pq.write_table(_rows(("e", "error")), out / "part-old-3.parquet")
    pq.write_table(_rows(("x", "error")), out / "part-old-4.parquet")  # not in the manifest
    staging = out / "_retry-r1"
    staging.mkdir()
    # This run redid b (now ok) and e (failed again); c's block failed: no new row.
    pq.write_table(_rows(("b", "ok"), ("e", "error")), staging / "part-r1-w_000000.parquet")
    files = sorted(str(p) for p in out.glob("*.parquet"))
    manifest_ids = pa.array(list("abcde"), pa.string())
    found = error_rows_by_file(fs, files, manifest_ids)
    assert {Path(k).name: v.to_pylist() for k, v in found.items()} == {
        "part-old-1.parquet": ["b", "c"],
        "part-old-3.parquet": ["e"],
    }
    moved = commit_retry(fs, str(out), str(staging), found, pa.array(["b", "e"]), "r1")
    assert sorted(Path(m).name for m in moved) == ["part-old-1.parquet", "part-old-3.parquet"]
    assert all(Path(m).parent == out / "_superseded" / "r1" for m in moved)
    assert not staging.exists()
    table = pq.read_table(out)  # pyarrow skips the _-prefixed folders, as the job does
    rows = {r["id"]: r["status"] for r in table.to_pylist()}
    assert table.num_rows == len(rows) == 6
    assert rows == {"a": "ok", "b": "ok", "c": "error", "d": "ok", "e": "error", "x": "error"}
    assert not list(out.glob(".*"))  # no hidden leftovers
    assert scan_output(str(out)).ids.to_pylist().count("b") == 1


def test_make_manifest_from_folder_and_glob(tmp_path):
    from serve_app.tools import make_manifest

    (tmp_path / "a" / "sub").mkdir(parents=True)
    for rel in ("a/x.wav", "a/sub/y.flac", "a/notes.txt", "a/sub/x.wav"):
        (tmp_path / rel).write_bytes(b"")
    out = tmp_path / "m.parquet"
    assert make_manifest.main([str(tmp_path / "a"), "-o", str(out), "--language", "en"]) == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["sub/x.wav", "sub/y.flac", "x.wav"]
    assert table.column("audio").to_pylist()[2] == str(tmp_path / "a" / "x.wav")
    assert set(table.column("language").to_pylist()) == {"en"}
    inspect_manifest(str(out))  # a valid job manifest
    make_manifest.main([str(tmp_path / "a" / "**" / "*.wav"), "-o", str(out)])
    assert pq.read_table(out).column("id").to_pylist() == ["sub/x.wav", "x.wav"]
    with pytest.raises(SystemExit, match="names both"):
        make_manifest.main([str(tmp_path / "a"), "-o", str(out), "--id", "stem"])
