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

Shared by the tests of this folder: the built overlays and what they hold.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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


def containers_of(resource: dict) -> list[dict]:
    return [c for _, t in pod_templates(resource) for c in t["spec"].get("containers", [])]


def mounts(template: dict) -> list[str]:
    containers = template["spec"]["containers"]
    return [m["mountPath"] for c in containers for m in c.get("volumeMounts", [])]


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


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (the suffixes used in manifests)."""
    text = str(value)
    factors = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
    for suffix in sorted(factors, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factors[suffix]
    return float(text)
