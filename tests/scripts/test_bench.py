"""The benchmark (``python -m scripts.bench``) and the batch tuner cannot rot: a tiny
end-to-end run, and the pure parts.

The smoke run uses the tiny random-weight Paraformer on 15 s of generated speech and the
cheap rows (1: AutoModel one file at a time, 2: AutoModel + fsmn-vad + batch_size_s,
6: the forward-only floor, and 6q: the same on ONNX Runtime int8, which exports the tiny
model first); it checks that every figure is there and positive, never how
fast anything is (figures live in docs/BENCHMARKS.md, not in tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts.bench import hook, measure
from serve_app.tools import tune_batch as tune
from serve_app.tools import tune_sweep
from tests.speech import requires_espeak

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, corpus_dir: Path, models: str, rows: str) -> dict:
    """``python -m scripts.bench`` on the 15 s corpus; its JSON report."""
    out = tmp_path / f"result-{models}.json"
    cmd = [
        sys.executable,
        "-m",
        "scripts.bench",
        "--corpus-minutes",
        "0.25",
        "--corpus-dir",
        str(corpus_dir),
        "--models",
        models,
        "--rows",
        rows,
        "--max-load",
        "1000",  # a smoke test never waits for a quiet machine, nor reruns a row
        "--retries",
        "0",
        "--json-out",
        str(out),
    ]
    # 15 s of audio takes well under a minute alone; the timeout only stops a hung run (a
    # shared 2-core machine under heavy load took close to 300 s).
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratios (RTFx / RTFx)" in proc.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-corpus")


@pytest.mark.slow
@requires_espeak
def test_benchmark_runs_and_reports_every_figure(tmp_path, corpus_dir, models_dir):
    """Rows 1, 2, 6, 6q and 7q (funasr-onnx's Paraformer, installed by the test set-up)."""
    report = run_bench(tmp_path, corpus_dir, "paraformer-tiny", "1,2,6,6q,7q")
    assert report["corpus"]["audio_s"] >= 14.5
    rows = {r["row"]: r for r in report["results"]}
    assert set(rows) == {"1", "2", "6", "6q", "7q"}
    for row in rows.values():
        assert row["status"] == "ok", row["reason"]
        assert row["rtfx"] > 0 and row["wall_s"] > 0 and row["audio_s"] > 0
        assert row["peak_rss_mib"] > 0
        assert row["batch_size_counts"] and all(v > 0 for v in row["batch_size_counts"].values())
        assert 0 < row["padding_efficiency"] <= 1.0
        assert row["load_before"] is not None
        assert row["rtfx_per_core"] > 0
    for row in ("1", "2"):  # per-file latencies of the library rows
        assert 0 < rows[row]["latency_p50_s"] <= rows[row]["latency_p99_s"]
    # Ratios over rows that did not run are reported as missing, not invented.
    ratios = {q["ratio"]: q for q in report["ratios"]}
    assert ratios["4/6"]["value"] is None
    assert ratios["6q/6"]["value"] > 0 and ratios["4q/6q"]["value"] is None
    # funasr-onnx's own batch_size=1: one forward per segment.
    assert rows["7q"]["batch_size_counts"] == {"1": rows["7q"]["extra"]["segments"]}


@pytest.mark.slow
@requires_espeak
def test_funasr_onnx_peer_rows_run_sensevoice(tmp_path, corpus_dir, models_dir):
    """Row 8q on SenseVoice: funasr-onnx's ``SenseVoiceSmall`` (its sentencepiece file
    beside the same exported graph), batch_size 8 in segment order."""
    report = run_bench(tmp_path, corpus_dir, "sensevoice-tiny", "8q")
    (row,) = report["results"]
    assert row["status"] == "ok", row["reason"]
    assert row["rtfx"] > 0 and row["extra"]["segments"] >= 1
    assert "SenseVoiceSmall(batch_size=8" in " ".join(row["notes"])


def _point(items, forward_s, rtfx, mem_gib, ok=True):
    return tune_sweep.SweepPoint(
        max_batch_items=items,
        max_forward_audio_s=forward_s,
        max_batch_audio_s=max(forward_s, 480.0),
        throughput_rtfx=rtfx,
        peak_memory_bytes=int(mem_gib * 2**30),
        ok=ok,
    )


def test_knee_is_the_smallest_capacity_near_the_best_throughput():
    points = [
        _point(32, 30, 10.0, 1.0),
        _point(32, 60, 18.0, 2.0),
        _point(32, 120, 19.5, 4.0),
        _point(32, 240, 20.0, 8.0),
    ]
    knee = tune_sweep.pick_knee(points, memory_limit_bytes=100 * 2**30, tolerance=0.05)
    assert knee.max_forward_audio_s == 120  # 19.5 >= 0.95 x 20; 18 is not
    loose = tune_sweep.pick_knee(points, memory_limit_bytes=100 * 2**30, tolerance=0.15)
    assert loose.max_forward_audio_s == 60


def test_knee_respects_the_memory_limit_and_failed_points():
    points = [
        _point(8, 60, 10.0, 1.0),
        _point(16, 120, 14.0, 3.0),
        _point(32, 240, 20.0, 9.0),  # the fastest, but over the limit
        _point(64, 480, 0.0, 0.0, ok=False),  # out of memory
    ]
    knee = tune_sweep.pick_knee(points, memory_limit_bytes=4 * 2**30)
    assert (knee.max_batch_items, knee.max_forward_audio_s) == (16, 120)
    with pytest.raises(ValueError, match="memory limit"):
        tune_sweep.pick_knee(points, memory_limit_bytes=0.5 * 2**30)
    with pytest.raises(ValueError):
        tune_sweep.pick_knee([], memory_limit_bytes=2**40)


def test_dynamic_batches_follow_the_item_cost():
    from serve_app.core.types import SegmentJob

    jobs = [SegmentJob(audio=np.zeros(int(s * 16000), np.float32)) for s in (2, 2, 2, 25, 2)]
    # Capacity 60 s / 4 items: every item costs at least 15 s -> 4 short ones fill a batch,
    # and the 25 s one does not fit after three of them.
    batches = tune_sweep.dynamic_batches(jobs, items=4, capacity_s=60.0)
    assert [len(b) for b in batches] == [3, 2]
    assert sum(len(b) for b in batches) == len(jobs)


def test_tuned_config_is_a_valid_serve_config(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import load_app_config

    template = yaml.safe_load((REPO / "ray_configs/serve.yaml").read_text())
    recognizer = {"name": "paraformer-large", "backend": "funasr", "model": "random/x"}
    batch = {"max_batch_audio_s": 480.0, "max_batch_items": 32, "max_forward_audio_s": 60.0}
    config = tune.tuned_config(
        template, recognizer=recognizer, batch=batch, replace_first=True, cpu_threads=2
    )
    path = tmp_path / "tuned.yaml"
    path.write_text(tune.header(["sweep table"]) + yaml.safe_dump(config, sort_keys=False))
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = load_app_config(path)
    rec = app.recognizer("paraformer-large")
    assert app.default_model == "paraformer-large"
    assert rec.batch.max_forward_audio_s == 60.0 and rec.batch.max_batch_items == 32
    assert rec.deployment.max_ongoing_requests >= 64
    assert rec.deployment.ray_actor_options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    # The template's other settings are kept as they were.
    assert app.vad.max_segment_s == 30


def test_tuned_config_splits_the_node_into_single_thread_replicas(tmp_path):
    from serve_app.config import AppConfig

    template = yaml.safe_load((REPO / "ray_configs/serve.yaml").read_text())
    recognizer = {"name": "whisper-tiny.en", "backend": "whisper", "model": "whisper-tiny.en"}
    batch = {"max_batch_audio_s": 480.0, "max_batch_items": 8, "max_forward_audio_s": 240.0}
    config = tune.tuned_config(
        template,
        recognizer=recognizer,
        batch=batch,
        replace_first=True,
        cpu_threads=1,
        replicas=2,
        cpus=2.0,
    )
    app = AppConfig.model_validate(config["applications"][0]["args"])
    rec = app.recognizer("whisper-tiny.en")
    assert rec.cpu_threads == 1 and rec.deployment.num_replicas == 2
    actor = rec.deployment.ray_actor_options
    assert actor["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"
    # Ingress and VAD keep their share: everything fits on the 2 CPUs.
    others = (
        app.vad_deployment.ray_actor_options["num_cpus"]
        + app.ingress.deployment.ray_actor_options["num_cpus"]
    )
    assert others + 2 * actor["num_cpus"] <= 2.0 and actor["num_cpus"] >= 0.5


def test_cpu_breakdown_groups_processes_by_role():
    before = {1: ("recognizer replica", 10.0), 2: ("vad replica", 1.0)}
    after = {
        1: ("recognizer replica", 25.0),
        2: ("vad replica", 3.5),
        3: ("recognizer replica", 4.0),  # started during the window: counted from 0
    }
    assert measure.cpu_breakdown(before, after) == {"recognizer replica": 19.0, "vad replica": 2.5}


class _Titled:
    """A process as psutil shows it: Ray workers retitle themselves (``ray::<actor>``)."""

    def __init__(self, pid: int, title: str) -> None:
        self.pid, self._title = pid, title

    def cmdline(self) -> list[str]:
        return self._title.split()

    def name(self) -> str:
        return Path(self._title.split()[0]).name


def test_serve_row_processes_are_labelled_by_role():
    """Row 4's CPU breakdown names each Serve role: process titles as ``ps`` shows them on
    Ray 2.60 during a row 4 run (``ray::ServeReplica:<app>:<deployment>.<method>``, app
    "bench"), with this project's deployment names as they are now."""
    from serve_app.online.deployments.recognizer import RecognizerDeployment
    from serve_app.online.deployments.vad import VadDeployment
    from serve_app.online.ingress import AsrIngress

    site = "/venv/lib/python3.11/site-packages/ray"
    replica = "ray::ServeReplica:bench:{}.initialize_and_get_metadata".format
    titles = {
        replica(RecognizerDeployment.name): "recognizer replica",
        replica(VadDeployment.name): "vad replica",
        replica(AsrIngress.name): "ingress replica",
        "ray::ProxyActor": "serve proxy",
        "ray::ServeController.listen_for_change": "serve controller",
        "ray::IDLE": "ray idle workers",
        "ray::MapWorker(MapBatches(RecognizeStage)).submit": "recognizer actor",
        "ray::MapWorker(MapBatches(DecodeVadStage)).submit": "decode+vad actor",
        "ray::MapWorker(MapBatches(AssembleStage)).submit": "assembler actor",
        "ray::Write": "ray data write tasks",
        "ray::_StatsActor.update_execution_metrics": "ray other workers",
        f"{site}/core/src/ray/raylet/raylet --node_ip_address=127.0.0.1": "ray system",
        f"{site}/core/src/ray/gcs/gcs_server --log_dir=/tmp/ray": "ray system",
        f"python -u {site}/_private/log_monitor.py --session-dir=/tmp/ray": "ray system",
    }
    for pid, (title, role) in enumerate(titles.items(), start=10**7):
        assert measure._process_label(_Titled(pid, title)) == role, title
    assert measure._process_label(_Titled(os.getpid(), "python")) == "benchmark + HTTP clients"


def test_ray_worker_setup_hook_imports_by_its_module_path():
    """Row 5 gives Ray the hook as a dotted path that its workers import with only the
    repository root on PYTHONPATH: a fresh interpreter must find it so."""
    env = hook.hook_env("/tmp/stats.jsonl")
    path = env["runtime_env"]["worker_process_setup_hook"]
    assert env["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    module, name = path.rsplit(".", 1)
    code = f"import {module} as m; assert callable(m.{name}), m"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd="/", env=env, check=True, timeout=60)


def test_cpu_timeline_counts_exited_processes_and_starts_at_the_window():
    """Row 5's per-role CPU: a process that exits (an actor ending with the job) counts up
    to its last sample, keeps its role when caught exiting, and a window starts at the
    last sample before its start time."""
    timeline = measure.CpuTimeline()
    timeline.samples = [
        (100.0, {1: ("recognizer actor", 10.0), 2: ("decode+vad actor", 5.0)}),
        (101.0, {1: ("recognizer actor", 11.0), 2: ("decode+vad actor", 7.0)}),
        (102.0, {1: ("recognizer actor", 12.5), 2: ("gone", 7.5)}),
        (103.0, {1: ("recognizer actor", 14.0), 3: ("ray other workers", 0.5)}),
    ]
    whole, whole_s = timeline.breakdown()
    assert whole_s == 3.0
    assert whole == {"recognizer actor": 4.0, "decode+vad actor": 2.5, "ray other workers": 0.5}
    steady, steady_s = timeline.breakdown(101.5)  # from the sample at 101
    assert steady_s == 2.0
    assert steady == {"recognizer actor": 3.0, "decode+vad actor": 0.5, "ray other workers": 0.5}
