"""The served test apps, one of each per session (a pytest plugin of tests/conftest.py, so
every folder's tests share the same deployment: fixtures imported into several conftests
would each deploy their own copy)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serve_app.tools.provision_models import provision_whisper_base
from tests.conftest import deploy, replica_options, undeploy

APP_NAME = "asr_test"
KEYED_APP_NAME = "asr_auth_test"  # with API keys
CAPS_APP_NAME = "asr_capabilities"  # punctuation, 2pass, Whisper base
ROUTE = "/asr"
# Deliberately small limits so the over-limit tests need little data.
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_DURATION_S = 60.0


def default_app_config(models_dir, random_models_dir) -> dict:
    return {
        "models_dir": str(models_dir),
        "audio": {"max_upload_bytes": MAX_UPLOAD_BYTES, "max_duration_s": MAX_DURATION_S},
        "vad_deployment": replica_options(max_ongoing_requests=16),
        "ingress": {
            "default_model": "whisper-tiny.en",
            "deployment": replica_options(max_ongoing_requests=128),
        },
        # The real GE2E speaker encoder: diarize=true works on this app (tests/speakers).
        "speakers": {
            "backend": "ge2e",
            "cpu_threads": 1,
            "batch": {"max_batch_audio_s": 96, "max_batch_items": 64, "batch_wait_timeout_s": 0.05},
            "deployment": replica_options(max_ongoing_requests=512),
        },
        "recognizers": [
            {
                "name": "whisper-tiny.en",
                "aliases": ["whisper-1"],
                "backend": "whisper",
                "model": "whisper-tiny.en",
                "precision": "int8",
                "language": "en",
                # A longer wait than production so 16 concurrent requests on 2 cores meet.
                "batch": {
                    "max_batch_audio_s": 480,
                    "max_batch_items": 16,
                    "batch_wait_timeout_s": 0.2,
                    "max_forward_audio_s": 480,
                },
                "deployment": replica_options(max_ongoing_requests=64),
            },
            {
                # Random weights, real FunASR classes: gibberish text, but batched and
                # one-at-a-time results must be identical.
                "name": "paraformer-tiny-random",
                "backend": "funasr",
                "model": str(random_models_dir / "paraformer-tiny"),
                "batch": {
                    "max_batch_audio_s": 240,
                    "max_batch_items": 16,
                    "batch_wait_timeout_s": 0.2,
                    "max_forward_audio_s": 240,
                },
                "deployment": replica_options(max_ongoing_requests=64),
            },
        ],
    }


def _served(base_url: str, config: dict, name: str, route: str):
    """Deploy ``config`` as app ``name`` at ``route``; yield its URL; delete it after."""

    deploy(config, name=name, route_prefix=route)
    _deployed[name] = (config, route)
    yield base_url + route
    if _deployed.pop(name, None) is not None:
        undeploy(name)


# -- a session app lives from its first test to its last -------------------------------
# An idle app is not free: its replicas (Serve's metrics and health loops, the stats
# pusher) and its stats board cost a few % of a core each, and the served apps' tests all
# run in one worker on 2 cores. The tests of each session app run together (tests/
# conftest.py orders them by ``app_rank``), and the app is deleted after its last test
# in the run order; a test of it after that (tests picked by node id in another
# order) deploys it again. One run each before and after: no gain visible in this
# machine's drift between runs (2026-12-07).
SESSION_APPS = {"keyed_url": KEYED_APP_NAME, "caps_url": CAPS_APP_NAME, "asr_url": APP_NAME}
_deployed: dict[str, tuple[dict, str]] = {}  # app -> (config, route): up now
_retired: dict[str, tuple[dict, str]] = {}  # deleted after what was its last test
_last_user: dict[str, str] = {}  # app -> node id of its last test in the run order


def app_rank(item: pytest.Item) -> int:
    """0: no session app; else 1 + the index in SESSION_APPS of the first one it uses."""
    names = getattr(item, "fixturenames", ())
    for rank, fixture in enumerate(SESSION_APPS, start=1):
        if fixture in names:
            return rank
    return 0


@pytest.hookimpl(trylast=True)  # after tests/conftest.py has ordered the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _last_user.clear()
    for item in items:
        for fixture, app in SESSION_APPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                _last_user[app] = item.nodeid


@pytest.hookimpl(trylast=True)  # after the item's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    for app, nodeid in _last_user.items():
        if nodeid == item.nodeid and app in _deployed:
            _retired[app] = _deployed.pop(app)
            undeploy(app)


@pytest.fixture(autouse=True)
def _session_apps_back(request: pytest.FixtureRequest) -> None:
    for fixture, app in SESSION_APPS.items():
        if app in _retired and fixture in request.fixturenames:
            config, route = _retired.pop(app)
            deploy(config, name=app, route_prefix=route)
            _deployed[app] = (config, route)


ONNX_MODEL = "paraformer-tiny-onnx"  # the same random weights on ONNX Runtime (fp32)


@pytest.fixture(scope="session")
def asr_url(serve_instance, models_dir, random_models_dir, tmp_path_factory):
    config = default_app_config(models_dir, random_models_dir)
    torch_paraformer = config["recognizers"][1]
    cache = {"ASR_ONNX_CACHE_DIR": str(tmp_path_factory.mktemp("onnx-cache"))}
    config["recognizers"].append(
        {
            **torch_paraformer,
            "name": ONNX_MODEL,
            "runtime": "onnx",
            "deployment": replica_options(
                max_ongoing_requests=64,
                ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": cache}},
            ),
        }
    )
    yield from _served(serve_instance, config, APP_NAME, ROUTE)


@pytest.fixture(scope="session")
def http(asr_url):
    with httpx.Client(base_url=asr_url, timeout=300) as client:
        yield client


# -- one app with API keys, shared by the HTTP and the browser auth tests ---------------
KEYED_ROUTE = "/asr-auth"
ENV_KEY = "sk-test-env-4f9c"
FILE_KEY = "sk-test-file-77a1"
OPERATOR_KEY = "sk-test-operator-0d2e"  # ASR_OPERATOR_KEYS: may POST /v1/tune
KEYED_MODEL = "paraformer-tiny-random"


@pytest.fixture(scope="session")
def keyed_url(serve_instance, models_dir, random_models_dir, tmp_path_factory):
    """A small app (FSMN-VAD + the random-weight Paraformer) whose ingress gets its keys the
    way a cluster gives them: one in ``ASR_API_KEYS``, one in the file named by
    ``ASR_API_KEYS_FILE``, an operator's in ``ASR_OPERATOR_KEYS``, through the replica's
    environment (a Secret on Kubernetes)."""

    keys_file = tmp_path_factory.mktemp("keys") / "api_keys"
    keys_file.write_text(f"# test keys\n{FILE_KEY}\n")
    env = {
        "ASR_API_KEYS": ENV_KEY,
        "ASR_API_KEYS_FILE": str(keys_file),
        "ASR_OPERATOR_KEYS": OPERATOR_KEY,
    }
    config = {
        "models_dir": str(models_dir),
        "vad_deployment": replica_options(),
        "ingress": {
            "deployment": replica_options(
                ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
            ),
        },
        "recognizers": [
            {
                "name": KEYED_MODEL,
                "backend": "funasr",
                "model": str(random_models_dir / "paraformer-tiny"),
                "batch": {"max_batch_items": 4},
                "deployment": replica_options(max_ongoing_requests=8),
            }
        ],
    }
    yield from _served(serve_instance, config, KEYED_APP_NAME, KEYED_ROUTE)


# -- the capabilities app (issue 10): punctuation stage + the multilingual Whisper base ---
# Shared by tests/serve/test_capabilities_http.py and the browser's translation test.
CAPS_ROUTE = "/caps"
CAPS_PARAFORMER = "paraformer-punc"
CAPS_WHISPER_BASE = "whisper-base"
CAPS_PUNCTUATION = {
    # Small windows so a request's text spans several windows and segment boundaries.
    "core_tokens": 12,
    "context_tokens": 6,
    "max_batch_tokens": 512,
    "max_batch_items": 32,
    "batch_wait_timeout_s": 0.2,
    "deployment": replica_options(max_ongoing_requests=64),
}


def _caps_batch() -> dict:
    return {
        "max_batch_audio_s": 240,
        "max_batch_items": 16,
        "batch_wait_timeout_s": 0.2,
        "max_forward_audio_s": 240,
    }


@pytest.fixture(scope="session")
def whisper_base_dir(models_dir: Path) -> Path:
    return provision_whisper_base(models_dir)


@pytest.fixture(scope="session")
def caps_app_config(models_dir, random_models_dir, ct_punc_tiny_dir, whisper_base_dir) -> dict:
    return {
        "models_dir": str(models_dir),
        "vad_deployment": replica_options(max_ongoing_requests=16),
        "ingress": {
            "default_model": CAPS_PARAFORMER,
            "deployment": replica_options(max_ongoing_requests=128),
            # The 2pass test checks where partials come from, not how fast: on a starved
            # CI machine the streaming replica's first calls ran past the 5 s default and
            # every partial was dropped.
            "realtime": {"partial_timeout_s": 30.0},
        },
        "recognizers": [
            {
                "name": CAPS_PARAFORMER,
                "backend": "funasr",
                "model": str(random_models_dir / "paraformer-tiny"),
                "batch": _caps_batch(),
                "deployment": replica_options(max_ongoing_requests=64),
                "punctuation": {"model": str(ct_punc_tiny_dir), **CAPS_PUNCTUATION},
                # Live partials from the streaming Paraformer (2pass).
                "streaming": {
                    "model": str(random_models_dir / "paraformer-streaming-tiny"),
                    "deployment": replica_options(max_ongoing_requests=64),
                },
            },
            {
                "name": CAPS_WHISPER_BASE,
                "backend": "whisper",
                "model": str(whisper_base_dir),
                "precision": "int8",
                "batch": _caps_batch(),
                "deployment": replica_options(max_ongoing_requests=64),
            },
        ],
    }


@pytest.fixture(scope="session")
def caps_url(serve_instance, caps_app_config):
    yield from _served(serve_instance, caps_app_config, CAPS_APP_NAME, CAPS_ROUTE)


@pytest.fixture(scope="session")
def caps_http(caps_url):
    with httpx.Client(base_url=caps_url, timeout=300) as client:
        yield client
