"""k8s/: serveConfigV2 through Ray's schema and our AppConfig, the cluster against what
runs on it, readiness."""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import pytest

from tests.k8s.helpers import (
    BATCH_OVERLAYS,
    K8S,
    OVERLAYS,
    REPO,
    SERVE_PORT,
    SERVICE_OVERLAYS,
    built,
    cluster_spec,
    containers_of,
    only,
    pinned,
    pod_templates,
    pods_needed,
    pyproject,
    serve_config,
)

# -- serveConfigV2: Ray's schema, our AppConfig --------------------------------------------


def unknown_keys(model: type, data: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that the pydantic ``model`` (recursively) does not declare."""
    import typing

    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = {name: f for name, f in fields.items()}
    names.update({f.alias: f for f in fields.values() if f.alias})
    out = []
    for key, value in data.items():
        if key not in names:
            out.append(f"{path}{key}")
            continue
        for sub in _model_types(names[key].annotation, typing, BaseModel):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += unknown_keys(sub, item, f"{path}{key}[{i}].")
            else:
                out += unknown_keys(sub, value, f"{path}{key}.")
    return out


def _model_types(annotation, typing, base_model) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, base_model):
        return [annotation]
    return [t for arg in typing.get_args(annotation) for t in _model_types(arg, typing, base_model)]


def autoscaling_problems(config: dict, where: str) -> list[str]:
    """``AutoscalingConfig`` validation plus what it lets through: unknown and deprecated
    keys (Ray ignores the first and only warns about the second)."""
    from ray.serve.config import AutoscalingConfig

    known = set(AutoscalingConfig.model_fields)
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(config) - known)]
    for key, field in AutoscalingConfig.model_fields.items():
        if key in config and "DEPRECATED" in (field.description or ""):
            problems.append(f"{where}: deprecated key {key!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AutoscalingConfig(**config)
        # e.g. look_back_period_s <= metrics_interval_s: "will raise in a future release"
        problems += [f"{where}: {w.message}" for w in caught if w.category is FutureWarning]
    except Exception as error:  # pydantic's ValidationError, or a ValueError: both reported
        problems.append(f"{where}: {error}")
    return problems


def deployment_settings(app_config) -> dict[str, Any]:
    """Deployment name (as app.py names it) -> its DeploymentSettings."""
    out = {"AsrIngress": app_config.ingress.deployment, "VadDeployment": app_config.vad_deployment}
    out.update({f"Recognizer-{r.name}": r.deployment for r in app_config.recognizers})
    return out


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_serve_config_validates(overlay):
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import AppConfig

    raw = serve_config(overlay)
    schema = ServeDeploySchema.model_validate(raw)
    assert unknown_keys(ServeDeploySchema, raw) == []
    assert schema.http_options.port == SERVE_PORT
    # Worker Pods' readiness (/healthz) goes through their own proxy.
    assert schema.proxy_location.value == "EveryNode"
    problems = []
    for app in raw["applications"]:
        assert app["import_path"] == "serve_app.online.app:build_app"
        config = AppConfig.model_validate(app["args"])
        for name, settings in deployment_settings(config).items():
            if settings.autoscaling_config is not None:
                problems += autoscaling_problems(settings.autoscaling_config, f"{name}")
        for deployment in app.get("deployments", []):
            if "autoscaling_config" in deployment:
                config_s = deployment["autoscaling_config"]
                problems += autoscaling_problems(config_s, deployment["name"])
    assert problems == []


def test_serve_config_checks_catch_mistakes():
    from ray.serve.schema import ServeDeploySchema

    raw = serve_config("gpu-paraformer")
    raw["http_option"] = {"port": 9000}  # typo: Ray ignores it
    raw["applications"][0]["deployments"] = [
        {"name": "VadDeployment", "autoscaling_config": {"min_replica": 1}}
    ]
    ServeDeploySchema.model_validate(raw)  # Ray takes it all
    assert sorted(unknown_keys(ServeDeploySchema, raw)) == [
        "applications[0].deployments[0].autoscaling_config.min_replica",
        "http_option",
    ]
    assert autoscaling_problems({"min_replica": 1}, "x") == ["x: unknown key 'min_replica'"]
    assert autoscaling_problems({"metrics_interval_s": 5}, "x") == [
        "x: deprecated key 'metrics_interval_s'"
    ]
    assert autoscaling_problems({"min_replicas": 3, "max_replicas": 2}, "x")
    assert "look_back_period_s" in autoscaling_problems({"look_back_period_s": 5}, "x")[0]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_recognizer_batches_fill_before_it_scales_out(overlay):
    """Serve adds a replica when a replica's ongoing requests (segments, running or queued
    for it) pass ``target_ongoing_requests``. Below a full batch of items that would split
    the segments that could have shared one forward pass; above ``max_ongoing_requests``
    the replica could never hold the target, so scaling would lag behind a queue."""
    from serve_app.config import AppConfig

    for app in serve_config(overlay)["applications"]:
        for rec in AppConfig.model_validate(app["args"]).recognizers:
            autoscaling = rec.deployment.autoscaling_config
            if autoscaling is None:
                continue
            # One forward pass at a time per replica: a full batch is max_batch_items.
            full_batch_items = rec.batch.max_batch_items
            target = autoscaling["target_ongoing_requests"]
            assert full_batch_items <= target <= rec.deployment.max_ongoing_requests, rec.name
            # Quick to add capacity, slow to give it back (GPU Pods take minutes to return).
            assert autoscaling["upscale_delay_s"] < autoscaling["downscale_delay_s"], rec.name


# -- the cluster against what runs on it ---------------------------------------------------


def serve_replicas(app_config, *, at: str) -> list[dict[str, float]]:
    """One resource shape per replica of every deployment, at its min or max count."""
    replicas = []
    for name, settings in deployment_settings(app_config).items():
        options = settings.ray_actor_options
        shape = {"CPU": float(options.get("num_cpus", 1)), "GPU": float(options.get("num_gpus", 0))}
        if settings.autoscaling_config is not None:
            count = settings.autoscaling_config.get(f"{at}_replicas", 1)
        else:
            count = settings.num_replicas
        assert isinstance(count, int), f"{name}: num_replicas {count!r}"
        replicas += [shape] * count
    return replicas


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_worker_groups_hold_serve_bounds(overlay):
    """At Serve's maximum every replica has a Pod within maxReplicas; at Serve's minimum
    no group is forced to keep Pods that nothing runs on."""
    from serve_app.config import AppConfig

    spec = cluster_spec(only(overlay, "RayService"))
    groups = spec["workerGroupSpecs"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for app in serve_config(overlay)["applications"]:
        config = AppConfig.model_validate(app["args"])
        at_max = pods_needed(groups, serve_replicas(config, at="max"))
        at_min = pods_needed(groups, serve_replicas(config, at="min"))
        for group in groups:
            name = group["groupName"]
            assert at_max[name] <= group["maxReplicas"], f"{name}: Serve's max: {at_max[name]} Pods"
            assert group["minReplicas"] <= at_min[name], f"{name}: idle Pods at Serve's min"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_cluster_checks_catch_mistakes():
    from serve_app.config import AppConfig

    groups = copy.deepcopy(cluster_spec(only("gpu-paraformer", "RayService"))["workerGroupSpecs"])
    config = AppConfig.model_validate(serve_config("gpu-paraformer")["applications"][0]["args"])
    at_max = pods_needed(groups, serve_replicas(config, at="max"))
    assert at_max == {"cpu-workers": 6, "gpu-workers": 8}
    groups[1]["rayStartParams"]["num-cpus"] = "1"  # less than a recognizer replica asks for
    with pytest.raises(AssertionError, match="no worker group fits"):
        pods_needed(groups, serve_replicas(config, at="max"))


@pytest.mark.parametrize("target", SERVICE_OVERLAYS + BATCH_OVERLAYS)
def test_autoscaling_cluster_and_versions(target):
    resource = only(target, "RayJob" if target in BATCH_OVERLAYS else "RayService")
    spec = cluster_spec(resource)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == pinned("ray")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu = target.startswith("gpu-")
    for name, template in pod_templates(resource):
        for container in template["spec"]["containers"]:
            # One tag names the project, Ray, Python and the variant the image was built for.
            version = pyproject()["project"]["version"]
            variant = "gpu" if gpu else "cpu"
            tag = f"{version}-ray{pinned('ray')}-{_python_tag()}-{variant}"
            assert container["image"].endswith(f"/ray-funasr-serve:{tag}"), container["image"]
        has_gpu = any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in template["spec"]["containers"]
        )
        assert has_gpu == (gpu and name == "gpu-workers"), name
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_sets_the_image(overlay):
    """No container keeps the bare placeholder: each overlay maps it to a tagged image of
    the registry that docs/DEPLOY.md tells you to replace, CPU or GPU build as fits."""
    version = pyproject()["project"]["version"]
    for resource in built(overlay):
        for container in containers_of(resource):
            gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
            registry, _, tag = container["image"].partition(":")
            assert registry == "registry.example.com/asr/ray-funasr-serve", container["image"]
            assert tag.startswith(f"{version}-ray{pinned('ray')}-{_python_tag()}-"), tag
            if gpu:
                assert tag.endswith("-gpu"), container["image"]


def _python_tag() -> str:
    dockerfile = (K8S / "Dockerfile").read_text()
    return re.search(r"^ARG PYTHON_TAG=(\S+)$", dockerfile, re.M).group(1)


def test_dockerfile_matches_pyproject():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pinned('ray'))}$", dockerfile, re.M)
    base = r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}\$\{VARIANT\}$"
    assert re.search(base, dockerfile, re.M)
    assert f"torch=={pinned('torch')}" in dockerfile
    tag = _python_tag()
    major, minor = int(tag[2]), int(tag[3:])
    assert pyproject()["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    from packaging.specifiers import SpecifierSet

    assert f"{major}.{minor}" in SpecifierSet(pyproject()["project"]["requires-python"])


def test_dockerfile_names_modules_that_exist():
    """The image build imports the app and the job and runs the provisioning module: a
    module moved in the tree and not in the Dockerfile fails the build (it did once:
    ``serve_app.app`` after the layout change)."""
    import importlib.util

    dockerfile = (K8S / "Dockerfile").read_text()
    imported = [
        name.strip()
        for line in re.findall(r'python -c "import ([^;"]+)', dockerfile)
        for name in line.split(",")
    ]
    run_modules = re.findall(r"python -m ([\w.]+)", dockerfile)
    assert "serve_app.online.app" in imported and run_modules
    for name in imported + run_modules:
        assert importlib.util.find_spec(name) is not None, name


# -- readiness -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_readiness_is_the_apps_healthz(overlay):
    service = only(overlay, "RayService")
    spec = cluster_spec(service)
    assert service["spec"]["excludeHeadPodFromServeSvc"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    # KubeRay deploys the Serve apps only once the head Pod is Ready: a /healthz probe on
    # the head (ready only once the apps run) would wait for itself forever.
    assert "readinessProbe" not in head
    for group in spec["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert ports.get(probe["port"], probe["port"]) == SERVE_PORT
        assert container["readinessProbe"]["timeoutSeconds"] > 5  # the ingress waits 5 s per check
    # ... and /healthz is what the ingress serves.
    assert '"/healthz"' in (REPO / "serve_app/online/ingress.py").read_text()
