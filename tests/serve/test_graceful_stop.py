"""``python -m serve_app.online.run``: SIGTERM under load answers every request it accepted.

Runs the runner as its own process (its own local Ray cluster, as on a fresh machine) with
the default models on a free port, starts concurrent requests, sends SIGTERM while they
are in flight, and checks: every one of them is answered 200 with its text, the process
exits 0, and it exits promptly. ``serve run`` itself loses these answers (its Ctrl-C kills
the HTTP proxy at once; it ignores SIGTERM's intent and aborts).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf
import yaml

from scripts.common.service import free_port
from tests.conftest import file_path_only, own_ray_env
from tests.reference import assert_wer_near_reference
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster, requires_espeak]
REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, port: int, models_dir: Path, ingress_replicas: int = 2) -> Path:
    config = file_path_only(yaml.safe_load((REPO / "ray_configs" / "serve.yaml").read_text()))
    config["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": 600}
    args = config["applications"][0]["args"]
    args["models_dir"] = str(models_dir)
    for section in (args["vad_deployment"], args["ingress"]["deployment"]):
        section["ray_actor_options"] = {"num_cpus": 0}
    args["recognizers"][0]["deployment"]["ray_actor_options"] = {"num_cpus": 0}
    # Two ingress replicas: the stop must wait for the busy one, not ask the idle one.
    args["ingress"]["deployment"]["num_replicas"] = ingress_replicas
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigterm_under_load_answers_every_accepted_request(tmp_path, models_dir, whisper_reference):
    # One long request and three short ones: the long one is still running on one ingress
    # replica when the others are done, so a drain that asks the idle replica ends early.
    long_texts = SENTENCES  # five times the short requests' speech
    long_audio = concat_with_pauses([synthesize(t, tmp_path) for t in long_texts], pause_s=1.0)
    long_buf = io.BytesIO()
    sf.write(long_buf, long_audio, 16000, format="WAV", subtype="PCM_16")
    texts = SENTENCES[:4]
    audio = concat_with_pauses([synthesize(t, tmp_path) for t in texts], pause_s=1.0)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "run.log"
    proc = _start_healthy(_config(tmp_path, port, models_dir), url, log_path)
    try:
        answers: list[httpx.Response | Exception] = []

        long_answer: list[httpx.Response | Exception] = []

        def client(body: bytes = data, into: list = answers) -> None:
            try:
                into.append(
                    httpx.post(
                        url + "/v1/audio/transcriptions",
                        files={"file": ("a.wav", body, "audio/wav")},
                        timeout=300,
                    )
                )
            except Exception as exc:
                into.append(exc)

        threads = [threading.Thread(target=client) for _ in range(3)]
        threads.append(threading.Thread(target=client, args=(long_buf.getvalue(), long_answer)))
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the requests are uploaded and in flight
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=300)
        rc = proc.wait(timeout=300)
        stop_s = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 0
    assert len(answers) == 3 and len(long_answer) == 1
    long = long_answer[0]
    assert isinstance(long, httpx.Response), repr(long)
    assert long.status_code == 200, long.text
    assert_wer_near_reference(
        [" ".join(long_texts)], [long.json()["text"]], [whisper_reference.transcribe(long_audio)]
    )
    for answer in answers:
        assert isinstance(answer, httpx.Response), repr(answer)
        assert answer.status_code == 200, answer.text
        assert_wer_near_reference(
            [" ".join(texts)], [answer.json()["text"]], [whisper_reference.transcribe(audio)]
        )
    # A hang guard, not a speed target: the drain waits for what is in flight, then stops.
    assert stop_s < 180, stop_s


def _start_healthy(
    config: Path, url: str, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``python -m serve_app.online.run`` until /healthz answers 200. One more start if
    Ray itself failed to come up: under the other test worker's load a fresh venv's
    dashboard agent can miss the raylet's 15 s wait for its port file (the raylet aborts,
    "Timed out waiting for file ... metrics_agent_port"); that is not what this test is
    about, and the log of a start that fails twice is in the assertion."""
    env = {**own_ray_env(), **(env or {})}
    for attempt in (1, 2):
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serve_app.online.run", str(config), *args],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("not healthy in time")
        with contextlib.suppress(ProcessLookupError):  # what the failed start left
            os.killpg(proc.pid, signal.SIGKILL)
        if attempt == 2:
            pytest.fail(
                "serve_app.online.run exited before it was healthy, twice:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
    raise AssertionError("unreachable")
