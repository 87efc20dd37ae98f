"""The offline bulk job: stage logic without Ray, then the real pipeline on the session cluster.

Unit tests (fast, no models) cover the pure stage logic with fakes. The integration tests
run the real job (FSMN-VAD + Whisper tiny.en) on a small corpus of espeak-ng speech and
bad rows, twice into one output directory to exercise resume, compare it with the online
request logic (``TranscriptionService`` over the same plain classes), and submit it once
with ``ray job submit`` to a ``ray start --head`` cluster.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
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
from serve_app.batch.job import _pool_args, build_pipeline, pending_manifest_blocks, run_job
from serve_app.batch.stages import (
    DECODED_SCHEMA,
    OUTPUT_SCHEMA,
    PART_OUTPUT_SCHEMA,
    AssembleStage,
    DecodeVadStage,
    error_text,
    normalize_hotwords,
    normalize_language,
    recognize_rows,
    resolve_audio_ref,
    split_row,
    split_speech,
    table_from_rows,
)
from serve_app.config import AudioSettings, VadSettings, load_app_config
from serve_app.core.errors import RecognitionError
from serve_app.core.evaluation import word_error_rate
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import RecognitionOptions, SegmentTranscript
from tests.reference import text_distance
from tests.speech import SENTENCES, concat_with_pauses, have_espeak, synthesize_wav

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "ray_configs"
SR = 16_000


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    sf.write(path, samples.astype(np.float32), SR, subtype="PCM_16")
    return path


def _manifest(path: Path, rows: list[dict]) -> Path:
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "audio": pa.array([r["audio"] for r in rows], pa.string()),
            "language": pa.array([r.get("language") for r in rows], pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


# -- unit: decode + VAD stage (fake VAD) ----------------------------------------------------


class _FakeVad:
    """Speech wherever the signal is loud, in 1 s windows (no model)."""

    def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        out = []
        for start in range(0, len(samples), SR):
            window = samples[start : start + SR]
            if np.abs(window).max(initial=0.0) > 0.05:
                out.append(SpeechSegment(start // 16, (start + len(window)) // 16))
        return out


def _stage(tmp_path: Path, **audio) -> DecodeVadStage:
    return DecodeVadStage(
        AudioSettings(**audio), VadSettings(), base_dir=str(tmp_path), segmenter=_FakeVad()
    )


def test_decode_stage_turns_bad_files_into_typed_error_rows(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "good.wav", tone)
    _write_wav(tmp_path / "long.wav", np.zeros(11 * SR))
    (tmp_path / "text.wav").write_text("this is not audio at all, just text")
    (tmp_path / "empty.wav").write_bytes(b"")
    stage = _stage(tmp_path, max_duration_s=10)
    rows = [
        {"id": "good", "audio": "good.wav", "language": "en"},  # relative to the manifest
        {"id": "missing", "audio": str(tmp_path / "nope.wav")},
        {"id": "text", "audio": "text.wav"},
        {"id": "empty", "audio": "empty.wav"},
        {"id": "long", "audio": "long.wav"},
        {"id": "null", "audio": None},
    ]
    out = stage(pa.Table.from_pylist(rows)).to_pylist()
    by_id = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    good = by_id["good"]
    assert good["status"] == "ok" and good["error"] is None
    assert good["duration_s"] == pytest.approx(3.0)
    assert [(s["start_ms"], s["end_ms"]) for s in good["speech"]] == [
        (0, 1000),
        (1000, 2000),
        (2000, 3000),
    ]
    assert len(good["speech"][0]["audio"]) == SR * 4  # float32 samples of 1 s
    assert good["language"] == "en"
    assert by_id["missing"]["error"].startswith("not_found: ")
    assert by_id["text"]["error"].startswith("invalid_audio: ")
    assert by_id["empty"]["error"].startswith("invalid_audio: ")
    assert by_id["long"]["error"].startswith("audio_too_long: ")
    assert by_id["null"]["error"].startswith("invalid_request: ")
    for row_id in ("missing", "text", "empty", "long", "null"):
        assert by_id[row_id]["status"] == "error" and by_id[row_id]["speech"] == []


def test_decode_stage_packs_segments_like_the_online_route(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "good.wav", np.concatenate([tone, np.zeros(2 * SR), tone]))
    stage = DecodeVadStage(
        AudioSettings(),
        VadSettings(),
        base_dir=str(tmp_path),
        segmenter=_FakeVad(),
        pack_segments_s=4.0,
    )
    (row,) = stage(pa.Table.from_pylist([{"id": "a", "audio": "good.wav"}])).to_pylist()
    # Six 1 s windows of speech (0-3 s, 5-8 s) become pieces of at most 4 s.
    assert [(s["start_ms"], s["end_ms"]) for s in row["speech"]] == [(0, 3000), (5000, 8000)]
    assert len(row["speech"][0]["audio"]) == 3 * SR * 4


def test_manifest_values_are_normalized():
    assert normalize_hotwords("  alpha  beta ") == ["alpha", "beta"]
    assert normalize_hotwords(["alpha", " ", None, "beta"]) == ["alpha", "beta"]
    assert normalize_hotwords(None) == []
    assert normalize_language("  ") is None and normalize_language("zh") == "zh"


def test_audio_refs_and_error_text():
    assert resolve_audio_ref("a/b.wav", "/m") == "/m/a/b.wav"
    assert resolve_audio_ref("/x/b.wav", "/m") == "/x/b.wav"
    assert resolve_audio_ref("s3://bucket/b.wav", "/m") == "s3://bucket/b.wav"
    assert error_text(RecognitionError("boom")) == "recognition_failed: boom"
    assert error_text(ValueError("x")) == "internal_error: ValueError: x"


# -- unit: recognize stage (fake recognizer) -------------------------------------------------


class _FakeRecognizer:
    """Records every call; a segment whose first sample is -1 fails alone."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def transcribe_batch(self, jobs):
        self.calls.append(list(jobs))
        return [
            RecognitionError("bad segment")
            if job.audio[0] == -1
            else SegmentTranscript(text=f" v{job.audio[0]:g} {job.options.language} ")
            for job in jobs
        ]


def _speech(*values_and_spans):
    return [
        {"start_ms": s, "end_ms": e, "audio": np.full(160, v, np.float32).tobytes()}
        for v, (s, e) in values_and_spans
    ]


def _decoded(row_id, speech=(), status="ok", error=None, language=None):
    return {
        "id": row_id,
        "language": language,
        "hotwords": [],
        "duration_s": 9.0,
        "status": status,
        "error": error,
        "speech": list(speech),
    }


def test_recognize_flattens_all_files_into_one_batch_and_regroups():
    rows = [
        _decoded("a", _speech((1, (0, 500)), (2, (900, 2000))), language="fr"),
        _decoded("bad", status="error", error="invalid_audio: nope"),
        _decoded("silence"),
        _decoded("b", _speech((3, (100, 400)), (-1, (700, 800)))),
        _decoded("c", _speech((4, (0, 300)))),
    ]
    fake = _FakeRecognizer()
    out = recognize_rows(
        table_from_rows(rows, DECODED_SCHEMA),
        fake,
        model_name="m",
        default_options=RecognitionOptions(language="en"),
    )
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 5  # every segment, one call
    by_id = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == ["a", "bad", "silence", "b", "c"]
    assert by_id["a"]["text"] == "v1 fr v2 fr"  # per-file language over the default
    assert by_id["a"]["segments"] == [
        {"start_s": 0.0, "end_s": 0.5, "text": "v1 fr"},
        {"start_s": 0.9, "end_s": 2.0, "text": "v2 fr"},
    ]
    assert by_id["c"]["text"] == "v4 en"
    assert by_id["bad"] == {
        "id": "bad",
        "text": None,
        "segments": None,
        "duration_s": 9.0,
        "status": "error",
        "error": "invalid_audio: nope",
        "model": "m",
    }
    assert by_id["silence"]["status"] == "ok"
    assert by_id["silence"]["text"] == "" and by_id["silence"]["segments"] == []
    assert by_id["b"]["status"] == "error"  # its failed segment fails it, not its batch
    assert by_id["b"]["error"] == "recognition_failed: bad segment"
    assert by_id["b"]["text"] is None
    assert table_from_rows(out, OUTPUT_SCHEMA).schema == OUTPUT_SCHEMA


def test_recognizer_crash_fails_its_files_only():
    class Broken:
        def transcribe_batch(self, jobs):
            raise RuntimeError("CUDA error")

    rows = [_decoded("a", _speech((1, (0, 500)))), _decoded("x", status="error", error="e: f")]
    out = recognize_rows(
        table_from_rows(rows, DECODED_SCHEMA),
        Broken(),
        model_name="m",
        default_options=RecognitionOptions(),
    )
    assert out[0]["status"] == "error"
    assert out[0]["error"] == "internal_error: RuntimeError: CUDA error"
    assert out[1]["error"] == "e: f"


# -- unit: long files in parts ---------------------------------------------------------------


def _items(lengths_ms):
    start, items = 0, []
    for length in lengths_ms:
        items.append({"start_ms": start, "end_ms": start + length})
        start += length + 500
    return items


def test_split_speech_makes_balanced_consecutive_parts():
    lengths = [10_000] * 61  # 610 s of speech
    parts = split_speech(_items(lengths), part_speech_s=120)
    assert len(parts) == 6  # ceil(610 / 120), not 5 full parts and a 10 s one
    assert [i for part in parts for i in part] == _items(lengths)  # in order, each once
    sizes = [sum(i["end_ms"] - i["start_ms"] for i in part) for part in parts]
    assert max(sizes) - min(sizes) <= 10_000  # within one item of each other
    varied = [3000, 29_000, 500, 12_000, 30_000, 8000, 1000, 27_000, 15_000, 4000]
    parts = split_speech(_items(varied), part_speech_s=40)
    assert [i for part in parts for i in part] == _items(varied)
    assert len(parts) == 4
    assert all(sum(i["end_ms"] - i["start_ms"] for i in p) <= 40_000 + 30_000 for p in parts)
    assert split_speech(_items(lengths), part_speech_s=0) == [_items(lengths)]
    assert split_speech(_items([5000, 5000]), part_speech_s=10) == [_items([5000, 5000])]
    assert split_speech([], part_speech_s=10) == [[]]


def test_split_row_keeps_errors_and_files_with_speakers_whole():
    speech = _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in range(1, 11)])
    row = _decoded("a", speech)
    parts = split_row(row, part_speech_s=2.0)  # 6 s of speech -> 3 parts of 2 s
    assert [(p["part"], p["parts"]) for p in parts] == [(0, 3), (1, 3), (2, 3)]
    assert sorted(len(p["speech"]) for p in parts) == [3, 3, 4]
    assert all(p["id"] == "a" and p["duration_s"] == 9.0 for p in parts)
    for whole in (
        _decoded("e", status="error", error="invalid_audio: x"),
        {**row, "turns": [{"start_s": 0.0, "end_s": 9.0, "speaker": "SPEAKER_1"}]},
        {**row, "channel_names": ["agent", "customer"]},
    ):
        (kept,) = split_row(whole, part_speech_s=2.0)
        assert (kept["part"], kept["parts"]) == (None, None)
        assert kept["speech"] == whole["speech"]
    (short,) = split_row(row, part_speech_s=60)
    assert short["parts"] is None


def test_a_file_in_parts_gives_the_transcript_of_the_whole_file():
    """Parts recognized in separate calls, arriving out of order and one twice (a retried
    call), assemble into the row the whole file gives in one call."""
    speech = _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in range(1, 11)])
    row = _decoded("long", speech, language="fr")
    other = _decoded("short", _speech((7, (0, 400))))
    opts = RecognitionOptions(language="en")

    def recognize(rows):
        table = table_from_rows(rows, DECODED_SCHEMA)
        return recognize_rows(table, _FakeRecognizer(), model_name="m", default_options=opts)

    (whole,) = recognize([{**row, "part": None, "parts": None}])
    parts = [recognize([p])[0] for p in split_row(row, part_speech_s=2.0)]
    (short,) = recognize([{**other, "part": None, "parts": None}])
    assert len(parts) == 3 and all(p["text"] for p in parts)

    assembler = AssembleStage()
    assert assembler.add([parts[2], short]) == [short]  # whole files pass straight through
    assert assembler.waiting_files == 1
    assert assembler.add([parts[0], parts[2]]) == []
    (merged,) = assembler.add([parts[1]])
    assert assembler.waiting_files == 0
    expected = {k: whole.get(k) for k in OUTPUT_SCHEMA.names}
    assert merged == expected
    assert merged["text"] == " ".join(f"v{v} fr" for v in range(1, 11))
    assert len(merged["segments"]) == 10

    # Through Ray Data's table interface: parts in, output rows out.
    table = AssembleStage()(table_from_rows([*parts, short], PART_OUTPUT_SCHEMA))
    assert table.schema == OUTPUT_SCHEMA
    want = table_from_rows([short, expected], OUTPUT_SCHEMA).to_pylist()
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])

    # A failed segment in one part fails the file, as it fails the whole file's row.
    bad = _decoded("bad", _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in (1, 2, -1, 4)]))
    (whole_bad,) = recognize([{**bad, "part": None, "parts": None}])
    bad_parts = [recognize([p])[0] for p in split_row(bad, part_speech_s=1.0)]
    assert len(bad_parts) > 1
    (merged_bad,) = AssembleStage().add(bad_parts)
    assert merged_bad == {k: whole_bad.get(k) for k in OUTPUT_SCHEMA.names}
    assert merged_bad["status"] == "error" and merged_bad["text"] is None


def test_decode_stage_emits_a_long_file_in_parts(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "long.wav", np.concatenate([tone, np.zeros(2 * SR), tone]))
    _write_wav(tmp_path / "short.wav", tone[:SR])
    stage = DecodeVadStage(
        AudioSettings(),
        VadSettings(),
        base_dir=str(tmp_path),
        segmenter=_FakeVad(),
        part_speech_s=2.0,
    )
    rows = [{"id": "long", "audio": "long.wav"}, {"id": "short", "audio": "short.wav"}]
    out = stage(pa.Table.from_pylist(rows))
    assert out.schema == DECODED_SCHEMA
    got = [(r["id"], r["part"], r["parts"], len(r["speech"])) for r in out.to_pylist()]
    # Six 1 s pieces of speech -> three parts of two; the 1 s file stays one row.
    assert got == [
        ("long", 0, 3, 2),
        ("long", 1, 3, 2),
        ("long", 2, 3, 2),
        ("short", None, None, 1),
    ]
    spans = [(s["start_ms"], s["end_ms"]) for r in out.to_pylist()[:3] for s in r["speech"]]
    assert spans == [
        (0, 1000),
        (1000, 2000),
        (2000, 3000),
        (5000, 6000),
        (6000, 7000),
        (7000, 8000),
    ]


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


def _rows(*specs: tuple[str, str]) -> pa.Table:
    return table_from_rows(
        [
            {"id": i, "status": st, "text": "t" if st == "ok" else None, "model": "m"}
            | ({"error": "not_found: x"} if st == "error" else {})
            for i, st in specs
        ],
        OUTPUT_SCHEMA,
    )


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


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_manifest_from_folder_and_glob(tmp_path):
    make_manifest = _load_script("make_manifest")
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


# -- integration: the real job on the session cluster ----------------------------------------

GOOD_SENTENCES = SENTENCES[:8]
LONG_SENTENCES = SENTENCES[8:13]


def _test_config() -> JobConfig:
    """batch_cpu.yaml with pools small enough for a 2-core machine shared with Serve tests."""
    base = load_job_config(CONFIG_DIR / "batch_cpu.yaml")
    return base.model_copy(
        update={
            "audio": AudioSettings(max_upload_bytes=50 * 1024 * 1024, max_duration_s=60),
            "decode_vad_pool": ActorPoolSettings(min_size=1, max_size=1, num_cpus=0.5),
            "recognizer_pool": ActorPoolSettings(min_size=1, max_size=1, num_cpus=0.5),
            "files_per_recognizer_batch": 8,
            "part_speech_s": 0.0,
        }
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~a dozen manifest rows: espeak sentences, a long file with pauses, silence, bad rows."""
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    root = tmp_path_factory.mktemp("corpus")
    rows, refs = [], {}
    for i, text in enumerate(GOOD_SENTENCES):
        synthesize_wav(text, root / f"s{i}.wav", speed_wpm=140 + 10 * (i % 3))
        rows.append({"id": f"s{i}", "audio": f"s{i}.wav", "language": "en" if i % 2 else None})
        refs[f"s{i}"] = text
    parts = []
    for j, text in enumerate(LONG_SENTENCES):
        parts.append(sf.read(synthesize_wav(text, root / f"l{j}.wav"), dtype="float32")[0])
    long_audio = concat_with_pauses(parts, pause_s=2.5)
    _write_wav(root / "long.wav", long_audio)
    rows.append({"id": "long", "audio": str(root / "long.wav")})
    refs["long"] = " ".join(LONG_SENTENCES)
    _write_wav(root / "silence.wav", np.zeros(3 * SR))
    rows.append({"id": "silence", "audio": "silence.wav"})
    (root / "notaudio.wav").write_text("RIFF? no: a text file pretending to be audio\n" * 20)
    (root / "empty.wav").write_bytes(b"")
    _write_wav(root / "toolong.wav", 0.01 * np.ones(61 * SR))
    rows += [
        {"id": "missing", "audio": str(root / "does-not-exist.wav")},
        {"id": "notaudio", "audio": "notaudio.wav"},
        {"id": "empty", "audio": "empty.wav"},
        {"id": "toolong", "audio": "toolong.wav"},
    ]
    manifest = _manifest(root / "manifest.parquet", rows)
    expected = {
        **dict.fromkeys([*refs, "silence"], "ok"),
        "missing": "not_found",
        "notaudio": "invalid_audio",
        "empty": "invalid_audio",
        "toolong": "audio_too_long",
    }
    return {"root": root, "rows": rows, "manifest": manifest, "refs": refs, "expected": expected}


@pytest.fixture(scope="module")
def job_result(corpus, ray_cluster, models_dir, tmp_path_factory):
    """Crash-and-resume: a first run that got through part of the manifest and left a
    half-written part file behind, then the full run into the same directory."""
    out = tmp_path_factory.mktemp("job") / "out"
    config = _test_config()
    first_rows = [corpus["rows"][i] for i in (0, 1, 2, 9, 10)]  # incl. one error row
    first_manifest = _manifest(corpus["root"] / "first.parquet", first_rows)
    started = time.perf_counter()
    first = run_job(config, manifest=str(first_manifest), output=str(out))
    first_files = sorted(p.name for p in out.glob("*.parquet"))
    sample = next(out.glob("*.parquet")).read_bytes()
    (out / "part-killed-00000000_000007-0.parquet").write_bytes(sample[: len(sample) // 3])
    second = run_job(config, manifest=str(corpus["manifest"]), output=str(out))
    third = run_job(config, manifest=str(corpus["manifest"]), output=str(out))
    table = pq.read_table(out)
    return {
        "out": out,
        "first": first,
        "first_files": first_files,
        "second": second,
        "third": third,
        "rows": {r["id"]: r for r in table.to_pylist()},
        "num_rows": table.num_rows,
        "schema": table.schema,
        "wall_s": time.perf_counter() - started,
    }


@pytest.mark.slow
def test_one_row_per_id_with_the_right_status(corpus, job_result):
    rows = job_result["rows"]
    assert job_result["num_rows"] == len(corpus["rows"]) == len(rows)
    assert job_result["schema"] == OUTPUT_SCHEMA
    assert {k: r["status"] for k, r in rows.items()} == {
        k: "ok" if v == "ok" else "error" for k, v in corpus["expected"].items()
    }
    for row_id, code in corpus["expected"].items():
        row = rows[row_id]
        assert row["model"] == "whisper-tiny.en"
        if code == "ok":
            assert row["error"] is None and row["text"] is not None
        else:
            assert row["error"].startswith(f"{code}: "), row
            assert row["text"] is None and row["segments"] is None
    silence = rows["silence"]
    assert silence["text"] == "" and silence["segments"] == []
    assert silence["duration_s"] == pytest.approx(3.0)
    assert rows["missing"]["duration_s"] is None


@pytest.mark.slow
def test_transcripts_are_accurate(corpus, job_result, whisper_reference):
    from tests.reference import assert_wer_near_reference

    rows = job_result["rows"]
    ids = sorted(corpus["refs"])
    library = [
        whisper_reference.transcribe(sf.read(corpus["root"] / f"{i}.wav", dtype="float32")[0])
        for i in ids
    ]
    assert_wer_near_reference(
        [corpus["refs"][i] for i in ids], [rows[i]["text"] for i in ids], library
    )
    long = rows["long"]
    assert len(long["segments"]) >= len(LONG_SENTENCES) - 1  # pauses split the file
    starts = [s["start_s"] for s in long["segments"]]
    assert starts == sorted(starts)
    assert all(
        0 <= s["start_s"] < s["end_s"] <= long["duration_s"] + 1e-6 for s in long["segments"]
    )
    assert long["text"] == " ".join(s["text"] for s in long["segments"] if s["text"])


@pytest.mark.slow
def test_resume_skips_done_ids_and_never_duplicates(corpus, job_result):
    first, second, third = job_result["first"], job_result["second"], job_result["third"]
    total = len(corpus["rows"])
    assert (first.files, first.skipped, first.failed) == (5, 0, 1)
    assert second.skipped == 5 and second.files == total - 5
    assert second.complete and (second.missing, second.duplicates, second.extra) == (0, 0, 0)
    assert [Path(p).name for p in second.quarantined] == [
        "part-killed-00000000_000007-0.parquet.corrupt"
    ]
    assert (third.files, third.skipped, third.missing) == (0, total, 0)  # nothing left to do
    out = job_result["out"]
    assert set(job_result["first_files"]) <= {p.name for p in out.glob("*.parquet")}
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in corpus["rows"])  # exactly once each
    assert second.audio_s > 0 and second.rtfx > 0
    assert "RTFx" in second.render() and json.loads(second.to_json())["complete"]


# Online vs offline (same classes, same audio): a segment's text may differ by a greedy
# token flip caused by batch shape (int8 on some CPUs); 0.25 of one transcript allows two
# words of the shortest file (8 words) and fails on a dropped or swapped segment.
MAX_ONLINE_OFFLINE_DISTANCE = 0.25
# Whisper span times inside a packed item can move by a timestamp token or two when the
# text differs; VAD-only boundaries are equal.
SPAN_TIME_TOLERANCE_S = 0.5


@pytest.mark.slow
def test_offline_matches_the_online_request_logic(corpus, job_result, models_dir):
    """TranscriptionService (the Serve ingress logic) over the same plain VAD and
    recognizer classes gives the same text and segments as the job."""
    from serve_app.config import resolve_models_dir
    from serve_app.core.audio import AudioLimits, decode_audio, read_audio_bytes
    from serve_app.online.service import ModelRoute, TranscriptionService
    from serve_app.recognizers.factory import build_recognizer
    from serve_app.vad.detectors import FsmnVad

    config = _test_config()
    models = resolve_models_dir(config.models_dir)
    vad = FsmnVad(config.vad, models_dir=models)
    recognizer = build_recognizer(config.recognizer, models)

    async def segment(samples):
        return vad.segments(samples)

    async def recognize(job):  # one item per call, as the Serve recognizer receives them
        (result,) = recognizer.transcribe_batch([job])
        if isinstance(result, Exception):
            raise result
        return result

    rec = config.recognizer
    defaults = RecognitionOptions(language=rec.language, hotwords=rec.hotwords)
    limits = AudioLimits(config.audio.max_upload_bytes, config.audio.max_duration_s)
    service = TranscriptionService(
        segment=segment,
        routes={
            rec.name: ModelRoute(
                rec.name, recognize, defaults, pack_segments_ms=rec.segment_pack_ms
            )
        },
        default_model=rec.name,
        limits=limits,
    )
    rows = job_result["rows"]
    checked = 0
    distances: list[float] = []
    texts: list[tuple[str, str]] = []
    for item in corpus["rows"]:
        if rows[item["id"]]["status"] != "ok":
            continue
        path = resolve_audio_ref(item["audio"], str(corpus["root"]))
        audio = decode_audio(read_audio_bytes(path), limits)
        online = asyncio.run(
            service.transcribe(
                audio, model=None, options=RecognitionOptions(language=item.get("language"))
            )
        )
        offline = rows[item["id"]]
        # Same VAD (fp32 torch, same input) and the same packing: the segment layout is
        # identical. Whisper's timed spans inside a packed item come from its decode.
        online_segments = [(s.start_s, s.end_s) for s in online.segments]
        offline_segments = [(s["start_s"], s["end_s"]) for s in offline["segments"]]
        assert abs(len(online_segments) - len(offline_segments)) <= 1, item["id"]
        if len(online_segments) == len(offline_segments):
            for (a0, a1), (b0, b1) in zip(online_segments, offline_segments):
                assert abs(a0 - b0) <= SPAN_TIME_TOLERANCE_S, item["id"]
                assert abs(a1 - b1) <= SPAN_TIME_TOLERANCE_S, item["id"]
        # The texts are not bit-for-bit equal on every CPU: online each item is decoded in
        # a batch of one here, offline in a batch with the block's other segments, and
        # int8 GEMM results depend on the batch's shape on some CPUs (seen on AVX2-only
        # Zen 1), which can flip a greedy token. A flipped word or two is allowed; a lost
        # or foreign segment is not.
        distances.append(text_distance(online.text, offline["text"]))
        assert distances[-1] <= MAX_ONLINE_OFFLINE_DISTANCE, (item["id"], online.text, offline)
        texts.append((online.text, offline["text"]))
        assert offline["duration_s"] == pytest.approx(online.duration_s)
        checked += 1
    assert checked == len(corpus["refs"]) + 1  # the speech files and the silent one
    # Over the whole corpus at most a few words differ.
    assert word_error_rate([a for a, _ in texts if a], [b for a, b in texts if a]) <= 0.05


@pytest.mark.slow
def test_a_long_file_in_parts_gives_the_same_row(ray_cluster, models_dir, tmp_path):
    """The real pipeline with a file split into parts (and the assembler actor) writes
    the row the unsplit job writes. Both parts ride in one recognizer call, as the whole
    file's pieces do, so the model sees the same batch and the rows must be equal."""
    from serve_app.config import resolve_models_dir
    from serve_app.core.audio import decode_audio, read_audio_bytes
    from serve_app.core.segmentation import pack_pieces
    from serve_app.vad.detectors import FsmnVad

    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    texts = LONG_SENTENCES + GOOD_SENTENCES[:3]
    audio = [
        sf.read(synthesize_wav(t, tmp_path / f"p{i}.wav"), dtype="float32")[0]
        for i, t in enumerate(texts)
    ]
    _write_wav(tmp_path / "longer.wav", concat_with_pauses(audio, pause_s=2.5))
    # One file: with another file in the manifest the two runs' recognizer calls could
    # hold different sets of items, and int8 results depend on the batch on some CPUs.
    manifest = _manifest(tmp_path / "m.parquet", [{"id": "longer", "audio": "longer.wav"}])
    whole_cfg = _test_config()
    parts_cfg = whole_cfg.model_copy(update={"part_speech_s": 10.0})

    # The file's speech really is more than one part at this setting.
    vad = FsmnVad(whole_cfg.vad, models_dir=resolve_models_dir(whole_cfg.models_dir))
    samples = decode_audio(read_audio_bytes(str(tmp_path / "longer.wav"))).samples
    pieces = pack_pieces(
        vad.segments(samples), max_piece_ms=whole_cfg.recognizer.segment_pack_ms, samples=samples
    )
    spans = [{"start_ms": p.segment.start_ms, "end_ms": p.segment.end_ms} for p in pieces]
    assert len(split_speech(spans, parts_cfg.part_speech_s)) >= 2

    outputs = {}
    for name, config in (("whole", whole_cfg), ("parts", parts_cfg)):
        summary = run_job(config, manifest=str(manifest), output=str(tmp_path / name))
        assert summary.complete and (summary.files, summary.failed) == (1, 0)
        table = pq.read_table(tmp_path / name)
        assert table.schema == OUTPUT_SCHEMA
        outputs[name] = {r["id"]: r for r in table.to_pylist()}
    assert outputs["parts"] == outputs["whole"]
    longer = outputs["parts"]["longer"]
    assert len(longer["segments"]) >= len(texts) - 2 and longer["text"]


_ONE_CALL_BLOCKS = """
import json, os, sys, threading
import pyarrow as pa, ray, ray.data
from serve_app.batch.job import blocks_of_one_call

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
threading.Timer(90, lambda: (print("HUNG", flush=True), os._exit(3))).start()

class Parts:  # one input row -> one block of 20 rows, like a long file's parts
    def __call__(self, b):
        return pa.table({"part": list(range(20 * b.num_rows))})

class Rows:  # batch_size=None: each call sees exactly one input block
    def __call__(self, b):
        return pa.table({"n": [b.num_rows]})

pool = lambda: ray.data.ActorPoolStrategy(size=1)
ds = ray.data.from_arrow([pa.table({"i": [k]}) for k in range(3)])
ds = ds.map_batches(Parts, batch_size=1, batch_format="pyarrow", compute=pool(), num_cpus=0.5)
if sys.argv[1] == "cut":
    ds = blocks_of_one_call(ds, 4)
ds = ds.map_batches(Rows, batch_size=None, batch_format="pyarrow", compute=pool(), num_cpus=0.5)
print(json.dumps(sorted(ds.to_pandas()["n"].tolist())), flush=True)
os._exit(0)
"""


def _block_sizes_seen(mode: str) -> list[int]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _ONE_CALL_BLOCKS, mode],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_long_files_parts_reach_the_recognizers_as_blocks_of_one_call():
    """Ray Data never splits a block between tasks, so a long file's parts (one decode
    block) all ran on one recognizer actor. ``blocks_of_one_call`` cuts them into blocks
    of one call each, and its tasks reserve no CPU: here the two actor pools hold the
    cluster's only CPU, where Ray Data's default 1-CPU repartition task never runs."""
    assert _block_sizes_seen("whole") == [20, 20, 20]  # what the recognizers got before
    cut = _block_sizes_seen("cut")
    assert sum(cut) == 60 and max(cut) <= 4 and len(cut) >= 15


def test_the_job_cuts_parts_into_recognizer_calls(ray_cluster, tmp_path):
    """With ``part_speech_s`` the pipeline re-blocks between decode and recognize, to
    ``files_per_recognizer_batch`` rows, no CPU and one task per decode actor; without
    parts it does not."""
    from ray.data._internal.logical.operators import StreamingRepartition

    manifest = inspect_manifest(
        str(_manifest(tmp_path / "m.parquet", [{"id": "a", "audio": "a.wav"}]))
    )
    for part_speech_s, expected in ((30.0, [(8, 0, 1)]), (0.0, [])):
        config = _test_config().model_copy(update={"part_speech_s": part_speech_s})
        ds = build_pipeline(config, manifest, pa.array([], pa.string()))
        found, op = [], ds._logical_plan.dag
        while op.input_dependencies:
            if isinstance(op, StreamingRepartition):
                found.append(
                    (
                        op.target_num_rows_per_block,
                        op.ray_remote_args["num_cpus"],
                        op.compute.size,
                    )
                )
            op = op.input_dependencies[0]
        assert found == expected


# -- integration: `ray job submit` against a `ray start --head` cluster ----------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are picked (one
    at a time, the OS may hand the same port out twice: a flaky `ray start`)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def head_node(tmp_path_factory, ray_cluster):
    """A separate 2-CPU `ray start --head --block` cluster, stopped by signalling the one
    process we started (never `ray stop`, which would stop every cluster on the host).

    Depends on ``ray_cluster`` so the session cluster exists first: its temp dir is
    separate, so ``ray.init()`` elsewhere never auto-connects to this one.
    """
    temp_dir = Path(f"/tmp/rjs{os.getpid()}")
    port, dashboard_port, agent_port = _free_ports(3)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path_factory.mktemp("head") / "ray_start.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(venv_bin) / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            # The agent's HTTP port defaults to a fixed 52365: a second cluster on the
            # host (the session one, a developer's) would leave jobs with no agent.
            f"--dashboard-agent-listen-port={agent_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: see {log.name}")
            time.sleep(1)
        yield {"address": address, "env": env}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


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


def _ray_workers(title_fragment: str) -> dict[int, str]:
    """``{pid: title}`` of this session's Ray workers whose title holds the fragment.

    Ray titles a worker process ``ray::<actor class>``; Ray Data names its pool actors
    ``MapWorker(MapBatches(<UDF class>))``. Only this process's own descendants are looked
    at (the session cluster's raylet is our child), never another cluster on the host.
    """
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and title_fragment in title:
            found[proc.pid] = title
    return found


def _good_rows(corpus) -> list[dict]:
    return [r for r in corpus["rows"] if corpus["expected"][r["id"]] == "ok"]


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
