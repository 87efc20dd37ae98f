"""k8s/: KubeRay resources against their CRDs (strict), pod templates and built-in
resources through kubernetes-validate."""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from tests.k8s.helpers import (
    CRD_DIR,
    CRD_FILES,
    KUBERNETES_VERSION,
    all_resources,
    cluster_spec,
    only,
    pod_templates,
    quantity,
)

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
