"""``python -m scripts.multinode``, short: a head and two worker nodes (``ray start``) on
this machine, the app deployed with ``serve deploy`` and proxies on every node; a worker
node killed under load, the head killed and started again on its Redis (GCS fault
tolerance), a worker node killed mid Ray Data job. The full drill is the script's default
run (docs/DEPLOY.md, "Multi-node")."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from scripts import multinode
from scripts.common.service import free_port
from serve_app.tools.speech import have_espeak

pytestmark = pytest.mark.slow


@pytest.fixture
def needs():
    if not have_espeak():
        pytest.skip("espeak-ng and sox make the speech")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server backs the GCS (GCS fault tolerance)")


def test_node_kills_and_head_kill_lose_nothing(needs, models_dir, tmp_path):
    out = tmp_path / "figures.json"
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too long for them.
    # The logs stay in /tmp/mn_* when it fails.
    work = Path(tempfile.mkdtemp(prefix="mn_", dir="/tmp"))
    code = run(work, out)
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    figures = json.loads(out.read_text())
    assert code == 0, json.dumps(figures, indent=1)[:6000]

    node = figures["node_kill"]
    assert node["processes_killed"] >= 3  # ray start, raylet, at least one replica
    # Every deployment's replicas on the surviving worker node, and nothing lost there:
    # a request whose ingress died with the node is answered 500 by the proxy (it may or
    # may not have run), so the client's retry (OpenAI's SDK does two) is part of it.
    assert all(set(n) == {"worker-a"} for n in node["layout_after"].values())
    assert node["started_after_kill"]["sent"] > 0
    for phase in ("started_before_kill", "started_after_kill"):
        assert node[phase]["lost_after_client_retries"] == 0, node[phase]

    head = figures["head_kill"]
    assert head["while_head_down"]["sent"] > 0, head
    assert head["while_head_down"]["lost_after_client_retries"] == 0, head
    assert head["same_replicas_after"] and head["head_proxy_healthy_after"], head

    job = figures["job_node_kill"]
    assert job["killed"] and job["rows_at_kill"] < job["files"], job
    assert job["rows"] == job["distinct_ids"] == job["files"] and job["statuses"] == {
        "ok": job["files"]
    }, job


def run(work: Path, out: Path) -> int:
    """The drills, short: 4 clients, a few seconds per phase, 6 files in the job."""
    return multinode.main(
        [
            "--http-port", str(free_port()),
            "--clients", "4",
            "--warmup-s", "8",
            "--after-s", "4",
            "--head-down-s", "12",
            "--job-files", "6",
            "--workdir", str(work),
            "--json", str(out),
        ]
    )  # fmt: skip
