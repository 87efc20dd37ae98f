"""GET /v1/system and /v1/tune on the served test app: every replica, live settings."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf

from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]
MODEL = "whisper-tiny.en"


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def test_ui_page_is_served_without_key_and_assets_resolve(http):
    page = http.get("/ui")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<base href="/asr/ui/">' in page.text
    assert http.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/").status_code == 200
    assert http.get("/ui/../serve_app/online/ui.py").status_code == 404


def system(http) -> dict:
    resp = http.get("/v1/system")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_system_counts_the_batches_of_every_replica(http, tmp_path):
    before = system(http)["models"][MODEL]["totals"]["items"]
    audio = wav_bytes(synthesize(SENTENCES[0], tmp_path))
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        # cache=false: an earlier test uploaded this sentence; this one must be recognized.
        data={"model": MODEL, "cache": "false"},
    )
    assert resp.status_code == 200, resp.text
    audio_s = float(resp.headers["x-audio-duration-s"])

    def grown():
        body = system(http)
        model = body["models"][MODEL]
        # Deployment states come from the controller, which may be slow under load (the
        # view then says so in ``deployments_error``); wait for a fresh answer.
        fresh = body["deployments_error"] is None
        return body if model["totals"]["items"] > before and fresh else None

    body = wait_for(grown)
    model = body["models"][MODEL]
    assert body["deployments"][f"Recognizer-{MODEL}"]["replica_states"]["RUNNING"] >= 1
    assert len(model["replicas"]) >= 1
    totals = model["totals"]
    assert (
        totals["num_batches"] >= 1
        and sum(totals["batch_size_counts"].values()) == totals["num_batches"]
    )
    assert 0 < totals["padding_efficiency"] <= 1
    # Speech only (the VAD drops silence): at most the file's duration was recognized.
    assert 0 < totals["audio_s"] and model["cumulative"]["audio_s"] >= totals["audio_s"] - 1e-6
    assert totals["busy_s"] > 0
    assert audio_s > 0
    assert model["queued_audio_s"] >= 0
    assert all(r["gpu_memory_allocated_bytes"] is None for r in model["replicas"])  # CPU


def test_tune_applies_live_and_reads_back(http):
    current = http.get("/v1/tune").json()["models"][MODEL]
    old_wait_s = current["settings"]["batch_wait_timeout_s"]
    new_wait_s = round(old_wait_s + 0.137, 3)
    try:
        resp = http.post(
            "/v1/tune", json={"model": "whisper-1", "batch_wait_timeout_s": new_wait_s}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == MODEL and body["applied_on_all"]
        assert [r["batch_wait_timeout_s"] for r in body["replicas"]] == [new_wait_s] * len(
            body["replicas"]
        )
        assert body["settings"]["batch_wait_timeout_s"] == new_wait_s
        again = http.get("/v1/tune").json()["models"][MODEL]
        assert all(r["batch_wait_timeout_s"] == new_wait_s for r in again["replicas"])
    finally:
        http.post("/v1/tune", json={"model": MODEL, "batch_wait_timeout_s": old_wait_s})
    bad = http.post("/v1/tune", json={"model": MODEL, "batch_wait_timeout_s": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "batch_wait_timeout_s"
    assert http.post("/v1/tune", json={"model": "nope", "max_batch_audio_s": 1}).status_code == 404


def test_a_capacity_tuned_below_a_segment_runs_that_segment_alone(http, tmp_path):
    """``max_batch_audio_s`` tuned below the length of an item: the item runs alone (it
    used to fail with Serve's "Size of item is greater than max_batch_size", a 500)."""
    current = http.get("/v1/tune").json()["models"][MODEL]["settings"]["max_batch_audio_s"]
    audio = wav_bytes(synthesize(SENTENCES[1], tmp_path))
    try:
        resp = http.post("/v1/tune", json={"model": MODEL, "max_batch_audio_s": 0.5})
        assert resp.status_code == 200 and resp.json()["applied_on_all"], resp.text
        resp = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("b.wav", audio, "audio/wav")},
            data={"model": MODEL, "cache": "false"},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["text"].strip()
    finally:
        http.post("/v1/tune", json={"model": MODEL, "max_batch_audio_s": current})
