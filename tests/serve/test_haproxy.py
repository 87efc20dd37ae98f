"""``python -m serve_app.online.run --haproxy``: Ray Serve's HAProxy mode.

HAProxy listens on the HTTP port and forwards each connection to the ingress replica's own
HTTP server, so uploads and websocket messages skip the Serve proxy actor (on 2 cores that
actor and the actor call per websocket message cost ~0.3 of a core at 16 live sessions:
docs/BENCHMARKS.md, "Live sessions"). Checked on the runner's own cluster: the port is
HAProxy's, the official ``openai`` client transcribes a file and a live session through
it, and a Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf

from scripts.common.service import free_port, free_ports
from tests.reference import assert_wer_near_reference
from tests.serve.test_graceful_stop import _config, _start_healthy
from tests.serve.test_live_models import stream
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize

REPO = Path(__file__).resolve().parents[2]


def _listener(port: int) -> str:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid).name()
    return ""


def test_with_a_running_cluster_the_flag_is_refused_not_ignored(monkeypatch):
    """Ray reads the variables where a cluster starts: a runner that only deploys onto one
    cannot switch it, so it says so instead of serving through the proxy unannounced."""
    from serve_app.online import run

    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    config = str(REPO / "ray_configs" / "serve.yaml")
    assert run.main([config, "--address", "127.0.0.1:1", "--haproxy"]) == 2
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ


@pytest.mark.slow
@pytest.mark.own_cluster
@requires_espeak
def test_files_and_live_sessions_through_haproxy(tmp_path, models_dir, whisper_reference):
    from openai import OpenAI

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = _config(tmp_path, port, models_dir, ingress_replicas=1)
    stats, metrics = free_ports(2)  # HAProxy's own ports (8404, 9101 by default)
    env = {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
    }
    proc = _start_healthy(config, url, tmp_path / "run.log", "--haproxy", env=env)
    try:
        assert "haproxy" in _listener(port)  # not Serve's proxy actor

        texts = SENTENCES[:2]
        audio = concat_with_pauses([synthesize(t, tmp_path) for t in texts], pause_s=1.0)
        buf = io.BytesIO()
        sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        text = client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", buf.getvalue(), "audio/wav")
        ).text
        reference = whisper_reference.transcribe(audio)
        assert_wer_near_reference([" ".join(texts)], [text], [reference])

        live = asyncio.run(stream(url, np.concatenate([silence(0.5), audio, silence(1.0)])))
        assert len(live) == len(texts)  # one final per sentence (server VAD)
        assert_wer_near_reference([" ".join(texts)], [" ".join(live)], [reference])
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
    assert rc == 0, (tmp_path / "run.log").read_text(errors="replace")[-4000:]
