"""k8s/: the bulk RayJob and model storage."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.k8s.helpers import (
    BATCH_OVERLAYS,
    REPO,
    built,
    cluster_spec,
    mounts,
    node_resources,
    only,
    pod_templates,
    pods_needed,
    render,
)

# -- the bulk job --------------------------------------------------------------------------


def entrypoint_args(job: dict) -> dict[str, str]:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "serve_app.batch.job"], words
    flags = words[3:]
    assert len(flags) % 2 == 0, flags
    return dict(zip(flags[::2], flags[1::2], strict=True))


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
