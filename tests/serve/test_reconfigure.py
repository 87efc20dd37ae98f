"""A config update under load: a new ``user_config`` reconfigures replicas in place.

The app is deployed declaratively (what ``serve deploy`` and ``serve run config.yaml`` do),
then deployed again with a ``user_config`` for the recognizer (a new
``batch_wait_timeout_s``) while clients keep sending speech: every request must succeed
and no replica may be replaced (``reconfigure`` runs in the live replica). The full
drill, with a restarting update and SIGTERM of ``serve run``, is
``scripts/restart_under_load.py``.
"""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
import soundfile as sf

from tests.conftest import replica_options, undeploy
from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]

APP_NAME = "asr_reconfigure_test"
ROUTE = "/asr-reconfigure"
MODEL = "paraformer-tiny-random"
RECOGNIZER = f"Recognizer-{MODEL}"
CLIENTS = 3


def _app_config(models_dir, random_models_dir, user_config: dict | None) -> dict:
    app: dict = {
        "name": APP_NAME,
        "route_prefix": ROUTE,
        "import_path": "serve_app.online.app:build_app",
        "args": {
            "models_dir": str(models_dir),
            "vad_deployment": replica_options(),
            "ingress": {"deployment": replica_options()},
            "recognizers": [
                {
                    "name": MODEL,
                    "backend": "funasr",
                    "model": str(random_models_dir / "paraformer-tiny"),
                    "batch": {"max_batch_items": 4, "batch_wait_timeout_s": 0.05},
                    "deployment": replica_options(max_ongoing_requests=8),
                }
            ],
        },
    }
    if user_config is not None:
        app["deployments"] = [{"name": RECOGNIZER, "user_config": user_config}]
    return app


def _apply(app: dict) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema(applications=[app]))


def _wait_running(timeout_s: float = 300) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(status.message)
        time.sleep(0.5)
    raise TimeoutError(f"{APP_NAME} not running after {timeout_s} s")


def _replicas() -> set[str]:
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in names if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")}


def _target_user_config() -> dict | None:
    import ray
    from ray.serve.context import _get_global_client

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
    deployment = details["applications"][APP_NAME]["deployments"][RECOGNIZER]
    return deployment["deployment_config"].get("user_config")


@pytest.fixture(scope="module")
def declarative_app(serve_instance, models_dir, random_models_dir):

    _apply(_app_config(models_dir, random_models_dir, None))
    _wait_running()
    yield serve_instance + ROUTE
    undeploy(APP_NAME)


def test_user_config_update_under_load_reconfigures_in_place(
    declarative_app, models_dir, random_models_dir, tmp_path
):
    buf = io.BytesIO()
    sf.write(buf, synthesize(SENTENCES[3], tmp_path), 16000, format="WAV")
    audio = buf.getvalue()
    requests: list[tuple[float, float, int, str]] = []  # (start, end, status, body)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=declarative_app, timeout=120) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(
                        "/v1/audio/transcriptions",
                        files={"file": ("a.wav", audio, "audio/wav")},
                        # cache=false: the load must reach the recognizer being changed.
                        data={"model": MODEL, "cache": "false"},
                    )
                    outcome = (r.status_code, r.text[:200])
                except httpx.HTTPError as exc:
                    outcome = (0, repr(exc))
                requests.append((started, time.monotonic(), *outcome))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: sum(r[2] == 200 for r in requests) >= CLIENTS, 120)
        before = _replicas()
        assert any(f"#{RECOGNIZER}#" in name for name in before)

        update_started = time.monotonic()
        _apply(_app_config(models_dir, random_models_dir, {"batch_wait_timeout_s": 0.3}))
        _wait_for(lambda: _target_user_config() == {"batch_wait_timeout_s": 0.3}, 60)
        _wait_running()
        update_done = time.monotonic()
        _wait_for(lambda: sum(r[0] > update_done for r in requests) >= 2 * CLIENTS, 120)
    finally:
        stop.set()
        for thread in threads:
            thread.join(150)

    failed = [r for r in requests if r[2] != 200]
    assert not failed, failed
    # Requests were in flight while the update was applied.
    assert any(start < update_done and end > update_started for start, end, _, _ in requests)
    assert _replicas() == before  # reconfigured, not restarted


def _wait_for(check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"condition not met within {timeout_s} s")
