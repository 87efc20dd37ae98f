"""Fixtures of the job's tests: the espeak-ng corpus, one real job run with resume, a
head node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from scripts.common.service import free_ports
from serve_app.batch.job import run_job
from tests.batch.helpers import (
    GOOD_SENTENCES,
    LONG_SENTENCES,
    SR,
    _manifest,
    _test_config,
    _write_wav,
)
from tests.speech import concat_with_pauses, have_espeak, synthesize_wav


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


@pytest.fixture
def head_node(tmp_path_factory, ray_cluster):
    """A separate 2-CPU `ray start --head --block` cluster, stopped by signalling the one
    process we started (never `ray stop`, which would stop every cluster on the host).

    Depends on ``ray_cluster`` so the session cluster exists first: its temp dir is
    separate, so ``ray.init()`` elsewhere never auto-connects to this one.
    """
    temp_dir = Path(f"/tmp/rjs{os.getpid()}")
    port, dashboard_port, agent_port = free_ports(3)
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
