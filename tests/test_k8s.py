"""Offline checks of the Kubernetes manifests in k8s/: no cluster, no network, a few seconds.

What is applied is what is checked: every overlay is built (by ``k8s/render.py``'s small
kustomize, compared with ``kubectl kustomize`` where kubectl is installed) and then

- each KubeRay custom resource is validated against its CRD's openAPIV3Schema
  (``../shared/kuberay-crds``), made strict the way ``kubectl apply --validate=strict`` is:
  unknown fields are errors, not silently pruned;
- each pod template, and each built-in resource, through ``kubernetes-validate`` (strict);
- each ``serveConfigV2`` through Ray's ``ServeDeploySchema`` and ``AutoscalingConfig``
  (unknown keys rejected here, as Ray ignores them) and its app args through ``AppConfig``;
  it must be the ray_configs/ file it is generated from;
- the RayJob's entrypoint, runtime env and job config;
- the arithmetic that ties them together: Serve's replica bounds against the worker
  groups' Pods, the recognizer's autoscaling target against its batch size, versions
  against pyproject.toml.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
KUBERNETES_VERSION = "1.32"  # the Kubernetes API the pod templates are validated against
SERVE_PORT = 8000

CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}


def _load_render():
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


render = _load_render()

OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
SERVICE_OVERLAYS = sorted(render.SERVE_CONFIG_SOURCES)
BATCH_OVERLAYS = ["gpu-batch", "cpu-dev-batch"]
# Kustomizations applied on their own besides the overlays.
EXTRA_KUSTOMIZATIONS = ["base/storage"]


@cache
def built(target: str) -> tuple[dict, ...]:
    """The resources of an overlay (``gpu-batch``) or a kustomization under k8s/."""
    directory = K8S / "overlays" / target if "/" not in target else K8S / target
    return tuple(render.build(directory))


def all_resources() -> list[tuple[str, dict]]:
    out = [(o, r) for o in OVERLAYS for r in built(o)]
    out += [(k, r) for k in EXTRA_KUSTOMIZATIONS for r in built(k)]
    return out


def only(target: str, kind: str) -> dict:
    matches = [r for r in built(target) if r["kind"] == kind]
    assert len(matches) == 1, f"{target}: expected one {kind}, found {len(matches)}"
    return matches[0]


def cluster_spec(resource: dict) -> dict:
    return resource["spec"][
        "rayClusterConfig" if resource["kind"] == "RayService" else "rayClusterSpec"
    ]


def serve_config(target: str) -> dict:
    return yaml.safe_load(only(target, "RayService")["spec"]["serveConfigV2"])


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    for dep in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


# -- one source of truth -----------------------------------------------------------------


def test_generated_serve_config_patches_are_current():
    stale = [str(p.relative_to(REPO)) for p in render.stale_files()]
    assert not stale, f"stale generated files {stale}: run `python k8s/render.py`"


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_serve_config_v2_is_the_ray_configs_file(overlay):
    source = render.SERVE_CONFIG_SOURCES[overlay]
    expected = yaml.safe_load((REPO / source.serve_config).read_text())
    if source.overrides:
        overrides = yaml.safe_load((REPO / source.overrides).read_text())
        expected = render.merge_overrides(expected, overrides)
    assert serve_config(overlay) == expected


def test_gpu_overlays_serve_the_gpu_files_verbatim():
    for overlay, source in render.SERVE_CONFIG_SOURCES.items():
        if overlay.startswith("gpu-"):
            assert source.overrides is None
            text = only(overlay, "RayService")["spec"]["serveConfigV2"]
            assert text == (REPO / source.serve_config).read_text().rstrip("\n") + "\n"
    gpu_files = {p.name for p in (REPO / "ray_configs").glob("serve_*_gpu.yaml")}
    served = {Path(s.serve_config).name for s in render.SERVE_CONFIG_SOURCES.values()}
    assert gpu_files <= served, f"GPU Serve configs without an overlay: {gpu_files - served}"


def test_merge_overrides_refuses_an_unknown_name():
    base = {"apps": [{"name": "asr", "x": 1}]}
    assert render.merge_overrides(base, {"apps": [{"name": "asr", "x": 2}]}) == {
        "apps": [{"name": "asr", "x": 2}]
    }
    with pytest.raises(ValueError, match="no item named 'asrr'"):
        render.merge_overrides(base, {"apps": [{"name": "asrr", "x": 2}]})


# -- kustomize -----------------------------------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("target", OVERLAYS + EXTRA_KUSTOMIZATIONS)
def test_fallback_build_matches_kustomize(target):
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: render.py's build is unchecked")
    directory = K8S / "overlays" / target if "/" not in target else K8S / target
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    ours = sorted(built(target), key=key)
    theirs = sorted((r for r in yaml.safe_load_all(result.stdout) if r), key=key)
    assert ours == theirs


def test_fallback_build_fails_on_a_wrong_index(tmp_path):
    # The `test` ops guard index-based patches: a reordered base must not patch the wrong group.
    overlay = tmp_path / "o"
    shutil.copytree(K8S / "overlays" / "cpu-dev", overlay)
    (overlay / "kustomization.yaml").write_text(
        (overlay / "kustomization.yaml").read_text().replace("../../base", str(K8S / "base"))
    )
    patch = overlay / "cluster.yaml"
    patch.write_text(patch.read_text().replace("value: gpu-workers", "value: cpu-workers", 1))
    with pytest.raises(ValueError, match="test failed"):
        render.build(overlay)


# -- CRD schemas ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The CRD schema as ``kubectl apply --validate=strict`` reads it, for jsonschema:
    unknown fields are errors (the API server would prune them silently),
    ``nullable`` admits null, ``x-kubernetes-int-or-string`` admits both."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = _strict(value)
        else:
            out[key] = value
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    """``x-kubernetes-list-type``: ``map`` items are unique by their map keys (missing keys
    take their schema default, as the API server does), ``set`` items are unique."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = [yaml.safe_dump(i) for i in instance]
        if len(seen) != len(set(seen)):
            yield jsonschema.ValidationError(f"duplicate items in a set list: {instance}")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        properties = schema.get("items", {}).get("properties", {})
        seen = set()
        for item in instance:
            value = tuple(item.get(k, properties.get(k, {}).get("default")) for k in keys)
            if value in seen:
                yield jsonschema.ValidationError(
                    f"duplicate {dict(zip(keys, value, strict=True))} in a map list"
                )
            seen.add(value)


_CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type}
)


@cache
def crd(kind: str) -> dict:
    """The strict v1 openAPIV3Schema of a KubeRay kind, and the paths its CEL rules guard."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}: CRD validation skipped")
    document = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=_yaml_loader())
    assert document["spec"]["names"]["kind"] == kind
    version = next(v for v in document["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    schema = version["schema"]["openAPIV3Schema"]
    return {"schema": _strict(schema), "cel": _cel_paths(schema, ())}


def _yaml_loader():
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes


def _cel_paths(schema: Any, path: tuple) -> list[tuple]:
    """Schema paths with ``x-kubernetes-validations`` (CEL), which jsonschema cannot run."""
    if not isinstance(schema, dict):
        return []
    found = [path] if "x-kubernetes-validations" in schema else []
    for name, sub in schema.get("properties", {}).items():
        found += _cel_paths(sub, (*path, name))
    if "items" in schema:
        found += _cel_paths(schema["items"], (*path, "[]"))
    return found


def _present(resource: Any, path: tuple) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(resource, list) and any(_present(i, rest) for i in resource)
    return isinstance(resource, dict) and head in resource and _present(resource[head], rest)


def crd_errors(resource: dict) -> list[str]:
    schema = crd(resource["kind"])
    validator = _CrdValidator(schema["schema"])
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(resource)
    ]
    # CEL rules are not evaluated here: refuse the fields they guard, so that using one
    # makes somebody check its rule by hand (today: managedBy, deletionStrategy, GCS FT).
    errors += [
        f"{'.'.join(p)}: guarded by a CEL rule this test cannot evaluate"
        for p in schema["cel"]
        if _present(resource, p)
    ]
    name = resource["metadata"].get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", name):
        # KubeRay: a DNS-1035 label, short enough for the names derived from it.
        errors.append(f"metadata.name {name!r}: not a DNS-1035 label of at most 40 characters")
    return errors


def custom_resources() -> list[tuple[str, dict]]:
    return [(t, r) for t, r in all_resources() if r["apiVersion"].startswith("ray.io/")]


@pytest.mark.parametrize(
    "target,resource", custom_resources(), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_custom_resource_matches_its_crd(target, resource):
    assert resource["apiVersion"] == "ray.io/v1"
    assert crd_errors(resource) == []


def test_crd_validation_catches_mistakes():
    service = copy.deepcopy(only("gpu-paraformer", "RayService"))
    service["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True  # typo
    group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["maxReplicas"] = "6"  # string
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "4 cores"
    group["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 8000})
    service["spec"]["rayClusterConfig"]["managedBy"] = "ray.io/kuberay-operator"
    errors = "\n".join(crd_errors(service))
    assert "'enableInTreeAutoscalling' was unexpected" in errors
    assert "maxReplicas: '6' is not of type 'integer'" in errors
    assert "'4 cores' does not match" in errors
    assert "duplicate {'containerPort': 8000, 'protocol': 'TCP'}" in errors
    assert "managedBy: guarded by a CEL rule" in errors


# -- pod templates and built-in resources --------------------------------------------------


def pod_templates(resource: dict) -> list[tuple[str, dict]]:
    if resource["kind"] in ("RayService", "RayJob"):
        spec = cluster_spec(resource)
        out = [("head", spec["headGroupSpec"]["template"])]
        out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
        if resource["kind"] == "RayJob" and "submitterPodTemplate" in resource["spec"]:
            out.append(("submitter", resource["spec"]["submitterPodTemplate"]))
        return out
    if resource["kind"] == "Job":
        return [("job", resource["spec"]["template"])]
    if resource["kind"] == "Pod":
        return [("pod", {"metadata": resource.get("metadata", {}), "spec": resource["spec"]})]
    return []


def _kubernetes_validate(document: dict) -> None:
    from kubernetes_validate import ValidationError, validate

    try:
        validate(document, KUBERNETES_VERSION, strict=True)
    except ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        raise AssertionError(f"{document['kind']}: {path}: {error.message}") from None


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PORT_NAME = re.compile(r"(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def pod_spec_problems(spec: dict) -> list[str]:
    """What the API server checks beyond the OpenAPI schema, for the parts we use."""
    problems = []
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for container in spec.get("initContainers", []) + spec["containers"]:
        name = container["name"]
        if not _DNS_LABEL.fullmatch(name):
            problems.append(f"container name {name!r} is not a DNS label")
        ports = {p.get("name") for p in container.get("ports", []) if p.get("name")}
        ports |= {p["containerPort"] for p in container.get("ports", [])}
        for port in container.get("ports", []):
            if "name" in port and not _PORT_NAME.fullmatch(port["name"]):
                problems.append(f"{name}: port name {port['name']!r} is not an IANA_SVC_NAME")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{name}: volumeMount {mount['name']!r} has no volume")
        for probe_kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = container.get(probe_kind, {}).get("httpGet", {}).get("port")
            if port is not None and port not in ports:
                problems.append(f"{name}: {probe_kind} port {port!r} is not a container port")
        resources = container.get("resources", {})
        for resource, request in resources.get("requests", {}).items():
            limit = resources.get("limits", {}).get(resource)
            if limit is not None and quantity(request) > quantity(limit):
                problems.append(f"{name}: {resource} request {request} > limit {limit}")
            if "/" in resource and limit is not None and quantity(request) != quantity(limit):
                problems.append(f"{name}: extended resource {resource}: request != limit")
        if not resources.get("limits"):
            problems.append(f"{name}: no resource limits (Ray sizes itself from them)")
    return problems


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (the suffixes used in manifests)."""
    text = str(value)
    factors = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
    for suffix in sorted(factors, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factors[suffix]
    return float(text)


@pytest.mark.parametrize(
    "target,resource", all_resources(), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_pod_templates_and_builtin_resources_validate(target, resource):
    if not resource["apiVersion"].startswith("ray.io/"):
        _kubernetes_validate(resource)  # Job, Pod, PersistentVolumeClaim: the whole thing
    for group, template in pod_templates(resource):
        _kubernetes_validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{resource['metadata']['name']}-{group}"},
                "template": template,
            }
        )
        assert pod_spec_problems(template["spec"]) == [], group


def test_pod_validation_catches_mistakes():
    service = only("gpu-paraformer", "RayService")
    template = copy.deepcopy(cluster_spec(service)["workerGroupSpecs"][1]["template"])
    container = template["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")  # typo
    with pytest.raises(AssertionError, match="'readynessProbe' was unexpected"):
        _kubernetes_validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "x"},
                "template": template,
            }
        )
    container["name"] = "Ray_Worker"
    container["volumeMounts"].append({"name": "cache", "mountPath": "/cache"})
    container["resources"]["requests"]["nvidia.com/gpu"] = "2"
    problems = "\n".join(pod_spec_problems(template["spec"]))
    assert "not a DNS label" in problems
    assert "'cache' has no volume" in problems
    assert "nvidia.com/gpu request 2 > limit 1" in problems


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


def node_resources(group: dict) -> dict[str, float]:
    """The Ray resources one Pod of a group advertises (as KubeRay's `ray start` sets them)."""
    container = group["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    params = group.get("rayStartParams", {})
    return {
        "CPU": float(params["num-cpus"]) if "num-cpus" in params else quantity(limits["cpu"]),
        "GPU": float(params["num-gpus"])
        if "num-gpus" in params
        else quantity(limits.get("nvidia.com/gpu", 0)),
    }


def pods_needed(groups: list[dict], replicas: list[dict[str, float]]) -> dict[str, int]:
    """Pods per group to place ``replicas`` (first fit, largest first; GPU groups only for
    replicas that need a GPU, as Ray's autoscaler avoids GPU nodes for CPU-only work).
    Raises if a replica fits no group."""
    pods: dict[str, list[dict[str, float]]] = {g["groupName"]: [] for g in groups}
    for replica in sorted(replicas, key=lambda r: (r["GPU"], r["CPU"]), reverse=True):
        candidates = [g for g in groups if (node_resources(g)["GPU"] > 0) == (replica["GPU"] > 0)]
        placed = False
        for group in candidates:
            for free in pods[group["groupName"]]:
                if all(free[k] >= replica[k] for k in replica):
                    for k in replica:
                        free[k] -= replica[k]
                    placed = True
                    break
            if placed:
                break
        if not placed:
            for group in candidates:
                capacity = node_resources(group)
                if all(capacity[k] >= replica[k] for k in replica):
                    pods[group["groupName"]].append({k: capacity[k] - replica[k] for k in capacity})
                    placed = True
                    break
        assert placed, f"no worker group fits a replica needing {replica}"
    return {name: len(p) for name, p in pods.items()}


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


def containers_of(resource: dict) -> list[dict]:
    return [c for _, t in pod_templates(resource) for c in t["spec"].get("containers", [])]


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


# -- the bulk job --------------------------------------------------------------------------


def entrypoint_args(job: dict) -> dict[str, str]:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "serve_app.batch.job"], words
    flags = words[3:]
    assert len(flags) % 2 == 0, flags
    return dict(zip(flags[::2], flags[1::2], strict=True))


def mounts(template: dict) -> list[str]:
    containers = template["spec"]["containers"]
    return [m["mountPath"] for c in containers for m in c.get("volumeMounts", [])]


@pytest.mark.parametrize("overlay", BATCH_OVERLAYS)
def test_rayjob(overlay):
    from ray.runtime_env import RuntimeEnv

    from serve_app.batch.config import load_job_config

    job = only(overlay, "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert spec["activeDeadlineSeconds"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's own validation of the runtime env fields
    assert set(runtime_env) == {"env_vars"}, "the code and its dependencies are in the image"
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())

    args = entrypoint_args(job)
    assert set(args) <= {"--manifest", "--output", "--config", "--address", "--summary-json"}
    assert args["--config"].startswith("/app/ray_configs/"), "the image's copy of ray_configs/"
    config_file = REPO / "ray_configs" / Path(args["--config"]).name
    job_config = load_job_config(config_file)

    # Local paths must be on a volume every Ray Pod mounts (the driver runs on the head).
    templates = pod_templates(job)
    for flag in ("--manifest", "--output", "--summary-json"):
        path = args.get(flag)
        if path and "://" not in path:
            for name, template in templates:
                assert any(path.startswith(m.rstrip("/") + "/") for m in mounts(template)), (
                    f"{flag} {path} is not on a volume of {name}"
                )

    # The actor pools fit the worker groups at their maximum; GPUs scale from zero.
    groups = cluster_spec(job)["workerGroupSpecs"]
    pools = [job_config.decode_vad_pool, job_config.recognizer_pool]
    actors = [
        {"CPU": float(pool.num_cpus), "GPU": float(pool.num_gpus)}
        for pool in pools
        for _ in range(pool.max_size)
    ]
    needed = pods_needed(groups, actors)
    for group in groups:
        assert needed[group["groupName"]] <= group["maxReplicas"], group["groupName"]
        if node_resources(group)["GPU"] > 0:
            assert group["minReplicas"] == 0 and group["replicas"] == 0, "GPUs scale from zero"
    if job_config.recognizer.device == "cuda":
        assert any(node_resources(g)["GPU"] > 0 for g in groups)
        assert job_config.models_dir in mounts(dict(templates)["gpu-workers"])
    else:
        assert not any(node_resources(g)["GPU"] > 0 for g in groups)


# -- model storage -------------------------------------------------------------------------


def _seeded_folders() -> dict[str, str]:
    job = only("seed-models", "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "MODELS":
            return ast.literal_eval(node.value)
    raise AssertionError("no MODELS = {...} in the seed Job's script")


def test_seed_job_fills_every_model_the_gpu_configs_name():
    from serve_app.batch.config import load_job_config
    from serve_app.config import load_app_config

    folders = set(_seeded_folders().values())
    wanted = set()
    for overlay, source in render.SERVE_CONFIG_SOURCES.items():
        if overlay.startswith("gpu-"):
            config = load_app_config(REPO / source.serve_config)
            assert config.models_dir == "/models"
            wanted |= {config.vad.model} | {r.model for r in config.recognizers}
    job_config_file = Path(entrypoint_args(only("gpu-batch", "RayJob"))["--config"]).name
    job = load_job_config(REPO / "ray_configs" / job_config_file)
    wanted |= {job.vad.model, job.recognizer.model}
    assert wanted <= folders, f"not seeded: {wanted - folders}"
    seed = only("seed-models", "Job")["spec"]["template"]
    assert "/models" in mounts(seed)


@pytest.mark.parametrize("overlay", ["gpu-paraformer", "gpu-sensevoice", "gpu-batch"])
def test_gpu_workers_mount_the_models_volume(overlay):
    resource = only(overlay, "RayJob" if overlay == "gpu-batch" else "RayService")
    for group in cluster_spec(resource)["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        assert "/models" in mounts(group["template"]), group["groupName"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in spec["volumes"]}
        assert claims["models"].get("claimName") == "asr-models"
    storage = built("base/storage")
    claims = {r["metadata"]["name"] for r in storage if r["kind"] == "PersistentVolumeClaim"}
    assert {"asr-models", "asr-data"} <= claims
