"""GCS fault tolerance in the RayServices: the production overlays keep the cluster's
metadata in the operator's Redis (``asr-redis``, docs/DEPLOY.md "Multi-node"), so a dead
head Pod does not take the worker Pods' replicas with it; the laptop overlay has none."""

from __future__ import annotations

import pytest

from tests.k8s.helpers import SERVICE_OVERLAYS, cluster_spec, only

PRODUCTION = [o for o in SERVICE_OVERLAYS if o.startswith("gpu-")]


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_production_services_keep_the_gcs_in_redis(overlay):
    spec = cluster_spec(only(overlay, "RayService"))
    ft = spec["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] == "redis://asr-redis:6379"
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert (secret["name"], secret["key"], secret.get("optional")) == (
        "asr-redis",
        "password",
        True,
    )
    assert ft["externalStorageNamespace"]
    # Traffic enters through the worker Pods, whose proxies keep serving while the head
    # is replaced; the head holds no replica.
    service = only(overlay, "RayService")["spec"]
    assert service["excludeHeadPodFromServeSvc"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_laptop_overlay_needs_no_redis():
    assert "gcsFaultToleranceOptions" not in cluster_spec(only("cpu-dev", "RayService"))
