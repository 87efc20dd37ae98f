"""Starting and watching a service for a measurement: free ports, waiting, ``serve run`` of
a config on a fresh local cluster, an app deployed from this process, an app's state as the
dashboard reports it, and the memory of every process of a running service.

Every cluster started here is new (``address="local"``, token auth off): a script never
attaches to another engineer's Ray on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# Ports handed to servers we start: below Linux's ephemeral range (32768-60999, where the
# kernel picks every outgoing connection's and every ``bind(0)``'s port) and above Ray's
# worker ports (10002-19999). A port from ``bind(0)`` is free when asked and may be taken
# by any process's next connection before our server binds it (a GCS failed so, in the
# suite, on 2026-12-06); a port out of that range is only taken by someone choosing it.
PORT_RANGE = (20000, 32767)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports in ``PORT_RANGE`` that nothing listens on now (each held
    bound until all are picked)."""
    import random

    picked: list[socket.socket] = []
    try:
        while len(picked) < count:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randint(*PORT_RANGE)))
            except OSError:  # taken: try another
                s.close()
                continue
            picked.append(s)
        return [int(s.getsockname()[1]) for s in picked]
    finally:
        for s in picked:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_until(
    check: Callable[[], object], timeout_s: float, what: str, period_s: float = 1.0
) -> float:
    """Seconds until ``check()`` is true; TimeoutError after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(period_s)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s")


def get_json(url: str, timeout_s: float = 10.0) -> dict | None:
    """A GET's JSON body; None unless it answered 200 with JSON."""
    try:
        r = httpx.get(url, timeout=timeout_s)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def serve_application(dashboard: str, app: str = "asr", timeout_s: float = 10.0) -> dict | None:
    """The dashboard's details of the Serve application ``app`` (its status, deployments
    and their replicas); None while there is no such app."""
    details = get_json(f"{dashboard}/api/serve/applications/", timeout_s)
    return (details or {}).get("applications", {}).get(app)


def healthy(url: str, path: str = "/healthz") -> bool:
    try:
        return httpx.get(url.rstrip("/") + path, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def serve_run(
    config: Path,
    port: int,
    work_dir: Path,
    *,
    address: str = "local",
    env_vars: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 900.0,
) -> subprocess.Popen:
    """``serve run`` ``config`` on ``port`` on a fresh local cluster (or ``address``); wait
    for /healthz.

    ``env_vars`` go to the app's runtime_env and to the cluster's own environment (the
    proxy and the controller too: allocator settings such as ``MALLOC_ARENA_MAX``). The
    process leads a group of its own: :func:`stop_group` stops it like Ctrl-C.
    """
    env_vars = env_vars or {}
    raw = yaml.safe_load(config.read_text())
    raw.setdefault("http_options", {})["port"] = port
    for app in raw["applications"] if env_vars else []:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
    copy = work_dir / f"{config.stem}_{port}.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    # Its own temp root: this cluster never becomes the host's "current" one, which a
    # plain ray.init() elsewhere (a test session, a script) would connect to.
    env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": str(work_dir), **env_vars}
    log = (log_path or work_dir / "serve_run.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "serve"), "run", "--address", address, str(copy)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited with {proc.returncode}; see {log.name}")
        return healthy(url)

    try:
        wait_until(up, timeout_s, f"serve run {config.name} (log {log.name})", period_s=2)
    except BaseException:
        stop_group(proc)
        raise
    return proc


def group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True)
    pairs = (line.split() for line in out.stdout.splitlines())
    return [int(pid) for pid, group in pairs if int(group) == pgid]


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 120) -> None:
    """Signal ``proc``'s process group (SIGINT: what Ctrl-C does; ``serve run`` then shuts
    Serve and its cluster down), wait, then kill whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout_s)
    for pid in group_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def deploy_local(
    app_args: dict,
    *,
    name: str,
    num_cpus: int | None = None,
    timeout_s: float = 600.0,
    haproxy: bool = False,
) -> str:
    """Build the app from ``app_args`` (an ``AppConfig`` dict) on a new local cluster
    started by this process, on a free port; its URL once it is RUNNING. Stop it with
    :func:`shutdown_local`. ``haproxy``: Ray Serve's HAProxy mode, as
    ``serve_app.online.run --haproxy`` starts it."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if haproxy:
        from serve_app.online.routing import HAPROXY_ENV

        os.environ.update(HAPROXY_ENV)
    import ray
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app
    from serve_app.online.placement import replica_demand, unplaceable

    config = AppConfig.model_validate(app_args)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    # A replica that cannot be placed is never scheduled: say so now, not after timeout_s.
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problems = unplaceable(replica_demand(config), nodes)
    if problems:
        ray.shutdown()
        raise RuntimeError(f"the app {name} cannot be placed: " + "; ".join(problems))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=name, route_prefix="/", blocking=False)

    def running() -> bool:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy of {name} failed: {status.message}")
        return status is not None and status.status == "RUNNING"

    wait_until(running, timeout_s, f"the app {name}")
    return f"http://127.0.0.1:{port}"


def shutdown_local() -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    if ray.is_initialized():
        ray.shutdown()


# -- the processes of a running service -----------------------------------------------------

MB = 1024 * 1024


def _listening_pid(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid:
                return conn.pid
    return None


def _title(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
    return cmdline[0] if cmdline else ""


SERVICE_ROLES = ("ServeReplica:", "ServeController", "ProxyActor")


def _label(title: str) -> str:
    """``ray::ServeController.listen_for_change`` -> ``ServeController``.

    Ray titles a worker ``ray::<actor class>``, and ``ray::<class>.<method>`` while a
    method runs; a method name is cut when it has an underscore (deployment names such as
    ``whisper-tiny.en`` keep their dots). While a method runs, Ray also cuts a class name
    at its last dot (``ray::en.handle_request``): such labels are replaced by a better one
    seen later (:meth:`RssSampler.sample_once`).
    """
    name = title.removeprefix("ray::").split(" ", 1)[0]
    head, sep, tail = name.rpartition(".")
    if sep and tail.isidentifier() and "_" in tail:
        return head
    return name


def _better_label(old: str | None, new: str) -> str:
    if old is None or (not old.startswith(SERVICE_ROLES) and new.startswith(SERVICE_ROLES)):
        return new
    return old


def service_processes(port: int) -> dict[int, str]:
    """``{pid: label}`` of the Ray worker processes of the service on ``port``, found
    without the dashboard: the process listening on the port is the Serve HTTP proxy (or,
    in Ray's HAProxy mode, ``haproxy``, a child of its ``HAProxyManager`` actor); the
    first ``raylet`` above it is the node's, and the raylet's other non-idle ``ray::``
    children are the replicas and the controller."""
    proxy_pid = _listening_pid(port)
    if proxy_pid is None:
        return {}
    try:
        proxy = psutil.Process(proxy_pid)
        raylet = next((p for p in proxy.parents() if "raylet" in _title(p)), None)
    except psutil.NoSuchProcess:
        return {}
    if raylet is None:
        return {}
    found: dict[int, str] = {}
    for child in raylet.children(recursive=False):
        title = _title(child)
        if not title.startswith("ray::") or title.startswith("ray::IDLE"):
            continue
        found[child.pid] = _label(title)
    if proxy_pid not in found:  # haproxy: counted as the proxy
        found[proxy_pid] = "ProxyActor:haproxy" if "haproxy" in _title(proxy) else "proxy"
    found[raylet.pid] = "raylet"
    return found


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class RssSampler(threading.Thread):
    """Samples the RSS of the service's processes every ``period_s`` (and at t=0)."""

    def __init__(self, port: int, period_s: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.port, self.period_s, self.t0 = port, period_s, t0
        self.samples: list[tuple[float, int, str, float]] = []  # t_s, pid, label, rss_mb
        self.labels: dict[int, str] = {}
        self.load_avg_1m: list[float] = []
        self._stop_event = threading.Event()

    def sample_once(self) -> None:
        t_s = time.monotonic() - self.t0
        self.load_avg_1m.append(os.getloadavg()[0])
        for pid, label in service_processes(self.port).items():
            self.labels[pid] = _better_label(self.labels.get(pid), label)
            value = rss_mb(pid)
            if value is not None:
                self.samples.append((t_s, pid, self.labels[pid], value))

    def run(self) -> None:
        while True:
            self.sample_once()
            if self._stop_event.wait(self.period_s):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample_once()
        # Every sample of a pid under the best name it was seen with.
        self.samples = [(t, pid, self.labels[pid], v) for t, pid, _, v in self.samples]
