"""``python -m serve_app.online.run`` refuses a config its own cluster cannot schedule.

Before: Serve kept the replica pending, /healthz answered 503 for ever, and the command
sat there. Now it exits 2 within seconds, naming the deployment and the resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import own_ray_env

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]
REPO = Path(__file__).resolve().parents[2]


def test_run_names_the_deployment_that_cannot_be_scheduled_and_exits(tmp_path):
    config = yaml.safe_load((REPO / "ray_configs" / "serve.yaml").read_text())
    config["http_options"]["port"] = 0
    speakers = config["applications"][0]["args"]["speakers"]
    too_many = float((os.cpu_count() or 1) + 1)
    speakers["deployment"]["ray_actor_options"] = {"num_cpus": too_many}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = own_ray_env()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.online.run", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"SpeakerDeployment: a replica asks for CPU {too_many:g}" in done.stderr
    assert "not deploying" in done.stderr
    assert time.monotonic() - started < 120


class _FlakyRay:
    """A ``ray`` module whose first ``failures`` inits raise (as a raylet that gave up)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def init(self, address: str, namespace: str) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise RuntimeError("Timed out waiting for file metrics_agent_port")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_start_that_fails_is_retried_a_given_cluster_is_not():
    from serve_app.online.run import init_ray

    flaky = _FlakyRay(failures=2)
    init_ray(flaky, "local", "serve", attempts=3, pause_s=0)
    assert (flaky.inits, flaky.shutdowns) == (3, 2)
    for attempts in (3, 1):  # out of attempts; a given cluster (attempts=1) fails at once
        failing = _FlakyRay(failures=5)
        with pytest.raises(RuntimeError, match="metrics_agent_port"):
            init_ray(failing, "local", "serve", attempts=attempts, pause_s=0)
        assert failing.inits == attempts
