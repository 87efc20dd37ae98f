"""A stage that cannot be scheduled: requests that need it get a 503 naming it, at once.

The app's speaker replica asks for a resource no node has, as a config too large for its
machine would. Before: a diarize=true request waited in Serve's router for a replica that
never comes, until the proxy's timeout; /healthz stays 503 (which it should). Now: after
``unavailable_after_s`` the request is answered 503 with Retry-After, naming the stage,
and requests that do not need it are served.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import replica_options, undeploy
from tests.serve.fake_ingress import wav

pytestmark = pytest.mark.slow

APP_NAME = "asr_unavailable_test"
ROUTE = "/asr-unavailable"
MODEL = "paraformer-tiny-random"


def test_a_stage_without_a_replica_is_a_503_naming_it(
    serve_instance, models_dir, random_models_dir
):
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app

    config = {
        "models_dir": str(models_dir),
        "vad_deployment": replica_options(),
        "ingress": {"deployment": replica_options(), "unavailable_after_s": 2.0},
        "speakers": {
            "backend": "ge2e",
            "deployment": {
                "num_replicas": 1,
                "max_ongoing_requests": 256,
                "ray_actor_options": {"num_cpus": 0, "resources": {"no_such_node": 1}},
                # serve.delete waits this long for the replica that never started
                # (Serve's default 20 s: a third of this test's time).
                "graceful_shutdown_timeout_s": 1,
            },
        },
        "recognizers": [
            {
                "name": MODEL,
                "backend": "funasr",
                "model": str(random_models_dir / "paraformer-tiny"),
                "deployment": replica_options(max_ongoing_requests=32),
            }
        ],
    }
    app = build_app(AppConfig.model_validate(config))
    serve._run(app, name=APP_NAME, route_prefix=ROUTE, _blocking=False)
    url = serve_instance + ROUTE
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 300
            while True:  # the ingress, VAD and recognizer run; the speaker replica never
                status = serve.status().applications.get(APP_NAME)
                deployments = status.deployments if status is not None else {}
                running = {
                    name: dict(d.replica_states).get("RUNNING", 0)
                    for name, d in deployments.items()
                }
                if running and all(
                    running.get(n, 0)
                    for n in ("AsrIngress", "VadDeployment", f"Recognizer-{MODEL}")
                ):
                    break
                assert time.monotonic() < deadline, running
                time.sleep(0.5)
            time.sleep(2.5)  # past unavailable_after_s
            assert client.get("/healthz").status_code == 503
            started = time.monotonic()
            refused = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", wav(1.0), "audio/wav")},
                data={"model": MODEL, "diarize": "true"},
            )
            assert time.monotonic() - started < 30
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "model_unavailable"
            assert "SpeakerDeployment" in refused.json()["error"]["message"]
            assert int(refused.headers["retry-after"]) >= 1
            served = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", wav(1.0), "audio/wav")},
                data={"model": MODEL},
            )
            assert served.status_code == 200, served.text
    finally:
        undeploy(APP_NAME)
