"""A real Prometheus (Debian's ``prometheus``) scrapes Ray's metrics endpoint during a short
load on the session's test app; every query of the Grafana dashboard then returns data.

Ray exports application and Serve metrics from each node's metrics agent on the node's
``metrics_export_port`` (8080 in the KubeRay Pods; here whatever port the session cluster
picked), with a ``ray_`` prefix.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from scripts.common.service import free_port
from tests.speech import SENTENCES, requires_espeak, synthesize

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "k8s" / "monitoring" / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    requires_espeak,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (setup.sh --test)"),
]


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def concrete(expr: str) -> str:
    """The query as Grafana would send it with "All" models and a 1 minute rate window."""
    return expr.replace("$__rate_interval", "1m").replace('"$model"', '".*"')


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, asr_url):
    import ray

    node = ray._private.worker.global_worker.node
    target = f"127.0.0.1:{node.metrics_export_port}"
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=(work / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/-/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "prometheus not ready"
                time.sleep(0.5)
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _has_data(client: httpx.Client, expr: str) -> bool:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    values = [float(r["value"][1]) for r in body["data"]["result"]]
    return any(math.isfinite(v) for v in values)


def test_every_dashboard_query_returns_data(prometheus, http, tmp_path):
    speech = synthesize(SENTENCES[1], tmp_path)
    rng = np.random.default_rng()
    missing: list[tuple[str, str]] = []
    queries = dashboard_queries()
    assert len(queries) >= 10
    deadline = time.monotonic() + 180
    while True:
        # A short load each round: speech for both models, bytes new each round (result
        # cache misses, so the recognizers keep working), the whisper upload once more (a
        # cache hit), one undecodable upload (an error by kind). Bounded: at most ~50
        # requests over the 3 minutes.
        tail = rng.uniform(-1e-3, 1e-3, 160).astype(np.float32)
        fresh = wav_bytes(np.concatenate([speech, tail]))
        for model, expected in (
            ("whisper-tiny.en", "miss"),
            ("paraformer-tiny-random", "miss"),
            ("whisper-tiny.en", "hit"),
        ):
            resp = http.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", fresh, "audio/wav")},
                data={"model": model},
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-cache"] == expected
        bad = http.post(
            "/v1/audio/transcriptions", files={"file": ("bad.wav", b"RIFF0000garbage", "audio/wav")}
        )
        assert bad.status_code in (400, 415)
        missing = [(t, e) for t, e in queries if not _has_data(prometheus, concrete(e))]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(5)
    names = prometheus.get("/api/v1/label/__name__/values").json()["data"]
    assert not missing, {
        "no data": missing,
        "scraped names": [n for n in names if n.startswith(("ray_asr", "ray_serve"))],
    }
