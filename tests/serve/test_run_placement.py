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
