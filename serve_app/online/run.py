"""``serve run`` with a stop that loses nothing: ``python -m serve_app.online.run CONFIG``.

Ray 2.60's ``serve run`` handles Ctrl-C with ``serve.shutdown()``, which kills the HTTP
proxy at once: requests in flight are finished by the ingress but their answers never
reach the clients. It does not handle SIGTERM (the stop signal of Kubernetes, systemd and
``docker stop``) at all: Ray's handler aborts the driver. This runner deploys the same
config file the same way ``serve run`` does (the controller's ``apply_config``), and on
SIGINT or SIGTERM stops in an order that answers every request it accepted:

1. **drain**: every ingress replica gets ``user_config: {draining: true}`` (Serve applies a
   user_config change in place, on every replica, without a restart); from then on a new
   transcription is answered 503 with ``Retry-After`` and ``/healthz`` is 503, so a load
   balancer stops sending and clients retry elsewhere;
2. **wait** until no ingress replica has a request in flight (``--drain-timeout-s``);
3. **delete** the applications while the proxy still answers (replicas finish anything
   left within their ``graceful_shutdown_timeout_s``);
4. ``serve.shutdown()`` and ``ray.shutdown()``.

``--haproxy`` starts the local cluster in Ray Serve's HAProxy mode (HAProxy on the HTTP
port, straight to the ingress replicas' own HTTP servers; docs/DEPLOY.md, "HAProxy").

A second signal skips to step 4. ``--address`` (or ``RAY_ADDRESS``) deploys onto a running
cluster, as ``serve run --address`` does; then step 4 leaves that cluster up. Without
either it starts its own local cluster (never attaching to a stale one left on the host).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("serve_app.online.run")

INGRESS_DEPLOYMENT = "AsrIngress"
_POLL_S = 0.5


# glibc malloc arenas per process (see main): 2 keeps RSS flat under sustained load.
MALLOC_ARENA_MAX = "2"


def draining_config(config: dict[str, Any], ingress: str = INGRESS_DEPLOYMENT) -> dict[str, Any]:
    """The same Serve config with ``user_config.draining = true`` on every app's ingress.

    Only the ingress's user_config changes, so Serve reconfigures it in place and leaves
    every other replica (and the models they hold) alone.
    """
    out = copy.deepcopy(config)
    for app in out.get("applications", []):
        entries = app.setdefault("deployments", [])
        entry = next((d for d in entries if d.get("name") == ingress), None)
        if entry is None:
            entry = {"name": ingress}
            entries.append(entry)
        entry["user_config"] = {**(entry.get("user_config") or {}), "draining": True}
    return out


def _ingress_replicas(app: str) -> int:
    from serve_app.online.availability import serve_running_replicas

    return serve_running_replicas(app).get(INGRESS_DEPLOYMENT, 0)


async def _drain_state(app: str) -> tuple[bool, int]:
    """(every ingress replica is draining, most requests in flight at one), from the
    reports every ingress replica sends to the app's board twice a second (a handle call
    would reach only the least-loaded replica: the idle one, not the busy one)."""
    from serve_app.online import system

    replicas = _ingress_replicas(app)
    if replicas == 0:
        return True, 0
    snapshot = await system.get_board(app).snapshot.remote()
    reports = (snapshot.get(system.INGRESS_KEY) or {}).get("replicas", [])
    return system.drain_progress(reports, replicas)


def wait_drained(apps: list[str], timeout_s: float, stop_now: threading.Event) -> bool:
    """True once two polls in a row found every ingress draining with nothing in flight."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline and not stop_now.is_set():
        states = [asyncio.run(_drain_state(app)) for app in apps]
        busy = sum(n for _, n in states)
        done = all(draining for draining, _ in states) and busy == 0
        quiet = quiet + 1 if done else 0
        if quiet >= 2:
            return True
        if busy:
            logger.info("draining: %d request(s) still in flight", busy)
        time.sleep(_POLL_S)
    return False


def _placement_problems(raw: dict[str, Any]) -> list[str]:
    """serve_app.online.placement's check of every app of this project in the config."""
    import ray

    from serve_app.config import AppConfig
    from serve_app.online.placement import replica_demand, unplaceable

    demand = []
    for app in raw.get("applications") or []:
        if app.get("import_path") == "serve_app.online.app:build_app":
            demand += replica_demand(AppConfig.model_validate(app.get("args") or {}))
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return unplaceable(demand, nodes)


def init_ray(
    ray: Any, address: str, namespace: str, *, attempts: int, pause_s: float = 2.0
) -> None:
    """``ray.init``, tried ``attempts`` times. Starting a local cluster on a loaded machine
    can fail on a fixed timeout inside Ray (seen on 2 cores: the raylet gave up after 15 s
    waiting for the dashboard agent's port file while another process deployed apps);
    a second start usually succeeds. Connecting to a given cluster is tried once."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, namespace=namespace)
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            logger.warning("starting Ray failed (attempt %d of %d): %s", attempt, attempts, exc)
            ray.shutdown()
            time.sleep(pause_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a Serve config file (ray_configs/*.yaml)")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or "local",
        help="'auto' or HOST:PORT of a running cluster; default RAY_ADDRESS, else a new local "
        "one (never a stale cluster left on the host)",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--haproxy",
        action="store_true",
        help="HAProxy in front of the ingress replicas instead of Serve's proxy actor (a "
        "cluster this command starts; for a running one, set the variables of "
        "serve_app.online.routing.HAPROXY_ENV where it was started)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    from serve_app.online import system

    raw = yaml.safe_load(args.config.read_text())
    config = ServeDeploySchema.model_validate(raw)
    apps = [app.name for app in config.applications]
    started_ray = not ray.is_initialized() and args.address == "local"
    if started_ray:
        # Every process of the cluster this command starts (raylet, proxy, controller,
        # replicas) inherits it: glibc's per-thread malloc arenas otherwise grow a
        # long-running replica's RSS without bound (docs/BENCHMARKS.md, "Soak").
        os.environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        if args.haproxy:
            from serve_app.online.routing import HAPROXY_ENV

            os.environ.update(HAPROXY_ENV)
    elif args.haproxy:
        logger.error("--haproxy starts a cluster: with --address, set its variables there")
        return 2
    if not ray.is_initialized():
        init_ray(ray, args.address, SERVE_NAMESPACE, attempts=3 if started_ray else 1)
    problems = _placement_problems(raw)
    if problems:
        for line in problems:
            logger.error("cannot be scheduled: %s", line)
        if started_ray:  # this command's own cluster: its resources are all there is
            logger.error("not deploying: the config asks for more than this machine has")
            ray.shutdown()
            return 2
        logger.warning("deploying anyway: the cluster may add nodes (autoscaling)")
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
        controller_options=config.controller_options,
    )
    client.deploy_apps(config, _blocking=False)
    logger.info("deployed %s from %s; SIGINT/SIGTERM stops it gracefully", apps, args.config)

    stop = threading.Event()
    stop_now = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            logger.warning("second %s: stopping now", signal.Signals(signum).name)
            stop_now.set()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(1.0):
        pass

    started = time.monotonic()
    try:
        if not stop_now.is_set():
            logger.info("draining: new requests get 503 + Retry-After")
            client.deploy_apps(ServeDeploySchema.model_validate(draining_config(raw)))
            drained = wait_drained(apps, args.drain_timeout_s, stop_now)
            logger.info("in-flight requests %s", "done" if drained else "not done in time")
            for app in apps:
                if not stop_now.is_set():
                    serve.delete(app, _blocking=True)
                    system.delete_board(app)  # the app's detached stats board goes with it
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
    logger.info("stopped in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
