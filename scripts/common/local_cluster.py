"""A multi-node Ray cluster on one machine for scripts.multinode: ``ray start`` nodes,
each in a process group of its own (killed whole), and the Serve config they run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from scripts.common.service import (
    BIN,
    RAY_ENV,
    REPO,
    free_ports,
    get_json,
    serve_application,
    stop_group,
    wait_until,
)

APP = "asr"
WORKER_RESOURCE = "mn_worker"


# -- the cluster --------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proxy_port: int
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pids(self) -> set[int]:
        """Every process of the node: its process group and the raylet's tree (a worker
        process that left the group is still the raylet's child)."""
        if self.proc is None:
            return set()
        found = set()
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == self.proc.pid:
                    found.add(proc.pid)
        with contextlib.suppress(psutil.Error):
            found |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        return found

    def kill(self) -> int:
        """SIGKILL the node whole; the number of processes killed."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        return len(pids)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, 30)
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


class Cluster:
    """A redis-server, a head and worker nodes, all started (and stopped) by this object."""

    def __init__(self, workdir: Path, http_port: int, workers: int, worker_cpus: float) -> None:
        self.workdir = workdir
        # Ray's socket paths (<temp dir>/session_<date>_<pid>/sockets/plasma_store) must fit
        # in 107 bytes: keep ``workdir`` short (/tmp/mn_...).
        self.temp_dir = workdir / "ray"
        self.http_port = http_port
        # Every port the cluster needs, drawn at once so no two are the same.
        ports = iter(free_ports(5 + 2 * workers))
        self.gcs_port, self.dashboard_port, self.redis_port = next(ports), next(ports), next(ports)
        self.redis: subprocess.Popen | None = None
        self.env = {**os.environ, **RAY_ENV, "RAY_REDIS_ADDRESS": f"127.0.0.1:{self.redis_port}"}
        self.env.pop("RAY_ADDRESS", None)
        # Ray waits 60 s for the dashboard by default: not enough on a starved machine.
        self.env["RAY_DASHBOARD_STARTUP_TIMEOUT_S"] = "180"
        # A worker node outlives a head that is down for this long.
        self.env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "180"
        self.env["RAY_external_storage_namespace"] = f"multinode-{os.getpid()}"
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        head_cmd = [
            str(BIN / "ray"), "start", "--head", *common,
            f"--port={self.gcs_port}", "--num-cpus=0", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={next(ports)}",
            f"--ray-client-server-port={next(ports)}",
            f"--temp-dir={self.temp_dir}",
        ]  # fmt: skip
        self.head = Node("head", head_cmd, self.env, workdir / "head.log", http_port)
        self.workers = []
        for i in range(workers):
            name = "worker-" + "abcdefgh"[i]
            port = next(ports)
            cmd = [
                str(BIN / "ray"), "start", f"--address=127.0.0.1:{self.gcs_port}", *common,
                f"--num-cpus={worker_cpus}", "--num-gpus=0",
                f"--resources={json.dumps({WORKER_RESOURCE: 100, name: 1})}",
                f"--dashboard-agent-listen-port={next(ports)}",
                f"--temp-dir={self.temp_dir}",
            ]  # fmt: skip
            env = {**self.env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(port)}
            self.workers.append(Node(name, cmd, env, workdir / f"{name}.log", port))

    @property
    def nodes(self) -> list[Node]:
        return [self.head, *self.workers]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=(self.workdir / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.start_head()
        for node in self.workers:
            self.start_worker(node)

    def start_head(self, tries: int = 2) -> None:
        """Start the head and wait for its dashboard. A ``ray start --head`` that exits
        (in the suite under load average 18 its dashboard missed Ray's startup wait,
        here 180 s), or whose dashboard found its port taken (between drawing it and
        binding it, by the other suite worker's Ray: the head runs on without a dashboard),
        is killed whole and started once more, on a new dashboard port."""
        for attempt in range(tries):
            self.head.start()

            def up() -> bool:
                if self.head.proc is not None and self.head.proc.poll() is not None:
                    raise RuntimeError(f"ray start --head exited; see {self.head.log}")
                if self._dashboard_port_taken():
                    raise RuntimeError(f"the dashboard's port {self.dashboard_port} was taken")
                return get_json(f"{self.dashboard}/api/version", 5) is not None

            try:
                wait_until(up, 180, "the head")
                return
            except RuntimeError as exc:
                if attempt + 1 == tries:
                    raise
                print(f"head: {exc}; started again (see {self.head.log})")
                self.head.kill()
                (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
                self.dashboard_port = free_ports(1)[0]
                self.head.cmd = [
                    f"--dashboard-port={self.dashboard_port}"
                    if arg.startswith("--dashboard-port=")
                    else arg
                    for arg in self.head.cmd
                ]

    def _dashboard_port_taken(self) -> bool:
        err = self.temp_dir / "session_latest" / "logs" / "dashboard.err"
        with contextlib.suppress(OSError):
            text = err.read_text(errors="replace")
            return "address already in use" in text and str(self.dashboard_port) in text
        return False

    def restart_head(self) -> str | None:
        """Start the head again (same port, same Redis). On one machine ``ray start --head``
        first refuses: the surviving worker raylets' command lines name the GCS address,
        which it takes for a running cluster, because the temp dir's
        ``ray_current_cluster`` names the same address. Its error (None if it started),
        then the start again without that file."""
        self.head.start()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self._head_up() is not None, 120, "the head")
            return None
        text = self.head.log.read_text(errors="replace")
        error = next((ln for ln in reversed(text.splitlines()) if "Error" in ln), "timeout")
        print(f"head: restart refused: {error}")
        (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        self.start_head()
        return error

    def _head_up(self) -> bool | None:
        if self.head.proc is not None and self.head.proc.poll() is not None:
            raise TimeoutError  # exited: refused
        return get_json(f"{self.dashboard}/api/version", 5)

    def start_worker(self, node: Node, tries: int = 2) -> None:
        """Start ``node`` and wait until it has joined: its own ``ray start`` said so and
        a node id that was not alive before is (a count can miss the join while a killed
        node still reads ALIVE: the dashboard's summary lags the GCS's health checks).

        Started one after the other, as here, two raylets in one temp dir once picked the
        same socket name and the second's bind failed ("Address already in use"): its
        ``ray start`` exits after a timeout. Judged by the node list alone, that node
        had "joined" (the list was read before the head was in it), and the drill ran
        with one worker. Such a start is tried again."""
        wait_until(self.alive_node_ids, 60, "the head in the node list")
        for attempt in range(tries):
            before = self.alive_node_ids()
            offset = node.log.stat().st_size if node.log.exists() else 0
            node.start()

            def joined(offset: int = offset, before: set[str] = before) -> bool:
                assert node.proc is not None
                log = node.log.read_bytes()[offset:].decode(errors="replace")
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray start of {node.name} exited; see {node.log}")
                return "Ray runtime started" in log and bool(self.alive_node_ids() - before)

            try:
                wait_until(joined, 120, f"{node.name} to join")
                return
            except RuntimeError:
                if attempt + 1 == tries:
                    raise
                print(f"cluster: {node.name} failed to start; starting it again")
                node.stop()

    def alive_node_ids(self) -> set[str]:
        nodes = get_json(f"{self.dashboard}/nodes?view=summary", 5)
        summary = (nodes or {}).get("data", {}).get("summary", [])
        return {
            n["raylet"]["nodeId"] for n in summary if n.get("raylet", {}).get("state") == "ALIVE"
        }

    def stop(self) -> None:
        """The drill's cluster is thrown away: its nodes are killed whole (a node's
        SIGTERM drain waits up to 30 s, the longest step of the drill's smoke test)."""
        for node in reversed(self.nodes):
            node.kill()
            node.proc = None
        if self.redis is not None:
            stop_group(self.redis, signal.SIGTERM, 10)

    def serve(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "serve"), *args, "--address", self.dashboard],
            cwd=REPO, env=self.env, capture_output=True, text=True, check=check, timeout=120,
        )  # fmt: skip

    def replicas(self) -> dict[str, list[dict]]:
        """Deployment -> its replicas (state, replica_id, pid, node_id)."""
        app = serve_application(self.dashboard, APP, 5) or {}
        return {name: d["replicas"] for name, d in app.get("deployments", {}).items()}

    def app_status(self) -> str | None:
        app = serve_application(self.dashboard, APP, 5)
        return app["status"] if app else None

    def pid_nodes(self) -> dict[int, str]:
        return {pid: n.name for n in self.nodes for pid in n.pids()}

    def layout(self) -> dict[str, dict[str, int]]:
        """Deployment -> {node name: RUNNING replicas}."""
        out: dict[str, dict[str, int]] = {}
        where_is = self.pid_nodes()
        for name, replicas in self.replicas().items():
            for r in replicas:
                if r["state"] == "RUNNING":
                    where = where_is.get(int(r.get("pid") or 0), "?")
                    out.setdefault(name, {}).setdefault(where, 0)
                    out[name][where] += 1
        return out


def serve_config(base: Path, http_port: int, replicas: int) -> dict:
    """``base`` (ray_configs/serve.yaml) on every node, each deployment of the app
    ``replicas`` times (no autoscaling), each replica small and on a worker node."""
    cfg = yaml.safe_load(base.read_text())
    cfg["proxy_location"] = "EveryNode"
    cfg["http_options"].update(host="127.0.0.1", port=http_port)
    (app,) = cfg["applications"]
    args = app["args"]
    sections = [(args["vad_deployment"], 0.25), (args["ingress"]["deployment"], 0.25)]
    # The recognizers share what is left of a 3-CPU worker, so that one worker can hold
    # every replica when the other is killed (serve.yaml has two: Whisper and Moonshine).
    share = round(min(0.5, 1.6 / max(1, replicas * len(args["recognizers"]))), 3)
    sections += [(r["deployment"], share) for r in args["recognizers"]]
    # Optional stages (speakers, punctuation): whatever else holds a deployment section.
    sections += [
        (value["deployment"], 0.1)
        for key, value in args.items()
        if key not in ("ingress", "recognizers") and isinstance(value, dict)
        if isinstance(value.get("deployment"), dict)
    ]
    for section, cpus in sections:
        section.pop("autoscaling_config", None)
        section["num_replicas"] = replicas
        section["ray_actor_options"] = {"num_cpus": cpus, "resources": {WORKER_RESOURCE: 1}}
    for rec in args["recognizers"]:
        rec["cpu_threads"] = 1
    return cfg
