"""``python -m scripts.multinode``, its smoke test: a head and two worker nodes (``ray
start``) on this machine, the app deployed with ``serve deploy`` and proxies on every node,
a worker node killed under load. The head kill (GCS fault tolerance) and the worker kill
mid Ray Data job are the script's own drills (its default run, docs/DEPLOY.md
"Multi-node"; ``--drills node head job``), measured there: here they would double the
test's time."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from scripts import multinode
from scripts.common.service import free_port, free_ports
from serve_app.tools.speech import have_espeak
from tests.conftest import file_path_only

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def needs():
    if not have_espeak():
        pytest.skip("espeak-ng and sox make the speech")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server backs the GCS (GCS fault tolerance)")


@pytest.mark.slow
@pytest.mark.own_cluster
def test_a_worker_node_killed_under_load_loses_nothing(needs, models_dir, tmp_path):
    out = tmp_path / "figures.json"
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too long for them.
    # The logs stay in /tmp/mn_* when it fails.
    work = Path(tempfile.mkdtemp(prefix="mn_", dir="/tmp"))
    # The file path's drill: serve.yaml without its live-only model and speakers.
    config = file_path_only(yaml.safe_load((REPO / "ray_configs" / "serve.yaml").read_text()))
    (work / "base.yaml").write_text(yaml.safe_dump(config))
    code = run(work, out, work / "base.yaml")
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    figures = json.loads(out.read_text())
    assert code == 0, json.dumps(figures, indent=1)[:6000]

    node = figures["node_kill"]
    assert node["processes_killed"] >= 3  # ray start, raylet, at least one replica
    # Every deployment's replicas on the surviving worker node, and nothing lost there:
    # a request whose ingress died with the node is answered 500 by the proxy (it may or
    # may not have run), so the client's retry (OpenAI's SDK does two) is part of it. A
    # 503 with Retry-After (admission: half the replicas, on a busy CI machine) is "come
    # back later", counted as shed, not lost; the survivor must still answer.
    assert all(set(n) == {"worker-a"} for n in node["layout_after"].values())
    assert node["started_after_kill"]["ok_first_attempt"] > 0
    for phase in ("started_before_kill", "started_after_kill"):
        assert node[phase]["lost_after_client_retries"] == 0, node[phase]


def run(work: Path, out: Path, config: Path) -> int:
    """The node drill, short: 4 clients, a few seconds before and after the kill."""
    return multinode.main(
        [
            "--drills", "node",
            "--config", str(config),
            "--http-port", str(free_port()),
            "--clients", "4",
            "--warmup-s", "5",
            "--after-s", "4",
            "--workdir", str(work),
            "--json", str(out),
        ]
    )  # fmt: skip


def test_ports_for_our_servers_are_outside_the_kernels_ephemeral_range():
    """The GCS of this drill once failed to bind a port ``bind(0)`` had found free: the
    kernel hands ephemeral ports to every new connection. Ours come from below that range
    (``/proc/sys/net/ipv4/ip_local_port_range``), distinct and bindable."""
    import socket

    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = free_ports(50)
    assert len(set(ports)) == 50 and all(p < low for p in ports)
    assert all(p > 19999 for p in ports)  # not Ray's worker ports either
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_a_dashboard_that_found_its_port_taken_is_seen(tmp_path):
    """The head runs on when its dashboard cannot bind (the suite's other worker's Ray took
    the port between drawing and binding): the drill waited 180 s and failed (2026-12-07).
    Seen, the head is started again on a new port."""
    from scripts.common.local_cluster import Cluster

    cluster = Cluster(tmp_path, free_port(), workers=0, worker_cpus=1)
    assert not cluster._dashboard_port_taken()
    logs = tmp_path / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "dashboard.err").write_text(
        "Exception: Failed to find a valid port for dashboard after 0 retries: [Errno 98] "
        f"error while attempting to bind on address ('127.0.0.1', {cluster.dashboard_port}): "
        "address already in use\n"
    )
    assert cluster._dashboard_port_taken()
