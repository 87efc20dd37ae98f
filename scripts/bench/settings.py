"""Batch settings and the app / job configs rows 2, 4, 5 and 6 run with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.common.service import REPO
from serve_app.tools.models import ModelSpec, default_precision
from serve_app.tools.models import models_dir as _models_dir

# When no tuned config exists (python -m serve_app.tools.tune_batch writes those).
_SHARED = {"max_batch_audio_s": 480.0, "batch_wait_timeout_s": 0.05}
BUILTIN_BATCH = {
    "funasr": {**_SHARED, "max_batch_items": 32, "max_forward_audio_s": 60.0},
    "whisper": {**_SHARED, "max_batch_items": 16, "max_forward_audio_s": 480.0},
}


def config_source(model: ModelSpec, device: str, config_path: str | None) -> Path:
    """The Serve config rows 2, 4, 5, 6 take their settings from.

    ``--batch-config``, else ``ray_configs/tuned_<device>_<model>.yaml`` (written by
    ``serve_app.tools.tune_batch``) when it exists, else ``ray_configs/serve.yaml``.
    """
    if config_path:
        path = Path(config_path)
        if not path.exists():
            raise SystemExit(f"--batch-config {config_path} does not exist")
        return path
    tuned = REPO / f"ray_configs/tuned_{device}_{model.name}.yaml"
    return tuned if tuned.exists() else REPO / "ray_configs/serve.yaml"


def _source_recognizer(model: ModelSpec, path: Path) -> dict:
    """The source config's recognizer for this model (by name), else its first one."""
    import yaml

    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    recs = args["recognizers"]
    return next((r for r in recs if r["name"] == model.name), recs[0])


def batch_settings(model: ModelSpec, path: Path) -> dict:
    """The recognizer batch section: from the source config when it is this model's (a
    tuned config), else the built-in CPU defaults for the backend."""
    from serve_app.config import BatchSettings

    rec = _source_recognizer(model, path)
    if rec["name"] == model.name:
        return BatchSettings.model_validate(rec.get("batch", {})).model_dump()
    return dict(BUILTIN_BATCH[model.backend])


def recognizer_settings(model: ModelSpec, opts: dict) -> dict:
    """A ``RecognizerSettings`` dict (without deployment) for this model, rows 4, 5, 6."""
    rec: dict[str, Any] = {
        "name": model.name,
        "backend": model.backend,
        "model": model.path,
        "device": opts["device"],
        "precision": default_precision(model, opts["device"], opts["precision"]),
        "language": model.language,
        "batch": opts["batch"],
    }
    if opts.get("runtime", "torch") != "torch":
        rec["runtime"] = opts["runtime"]  # the ONNX rows (4o, 6q, ...)
    if opts["device"] == "cpu":
        # "shipped": 0 = follow OMP_NUM_THREADS, which Ray sets from num_cpus (1 thread).
        rec["cpu_threads"] = opts["threads"] if opts["layout"] == "config" else 0
    return rec


def serve_app_config(model: ModelSpec, opts: dict) -> dict:
    """The ``AppConfig`` of row 4: the source Serve config serving this model; with
    ``layout="config"`` its deployments (the recognizer on all cores, as the tuner writes),
    with ``"shipped"`` those of ``ray_configs/serve.yaml`` untouched."""
    import copy

    import yaml

    source = (
        Path(opts["config_path"]) if opts["layout"] == "config" else REPO / "ray_configs/serve.yaml"
    )
    args = copy.deepcopy(yaml.safe_load(source.read_text())["applications"][0]["args"])
    template_rec = _source_recognizer(model, source)
    deployment = copy.deepcopy(template_rec.get("deployment", {}))
    items = int(opts["batch"]["max_batch_items"])
    # The config's own limit (a tuned config sets it); else room for two dynamic batches.
    deployment["max_ongoing_requests"] = int(deployment.get("max_ongoing_requests") or 2 * items)
    if opts["device"] == "cuda":
        actor = deployment.setdefault("ray_actor_options", {})
        actor["num_gpus"] = 1
    elif opts["layout"] == "config":
        env = (
            deployment.setdefault("ray_actor_options", {})
            .setdefault("runtime_env", {})
            .setdefault("env_vars", {})
        )
        env.setdefault("OMP_NUM_THREADS", str(opts["threads"]))
    rec = {**recognizer_settings(model, opts), "deployment": deployment}
    if opts["layout"] == "config" and template_rec.get("cpu_threads"):
        # The config sizes its replicas itself (e.g. two 1-thread replicas on 2 cores).
        rec["cpu_threads"] = template_rec["cpu_threads"]
    rec["aliases"] = template_rec.get("aliases", [])
    # A closed loop, not an overload: admission control admits all (scripts.overload
    # measures admission).
    rec["max_queue_wait_s"] = max(float(template_rec.get("max_queue_wait_s", 0)), 3600.0)
    args["recognizers"] = [rec]
    args["models_dir"] = str(_models_dir())
    args["vad"] = {**args.get("vad", {}), "model": opts["vad_model"]}
    args.setdefault("ingress", {})["default_model"] = model.name
    # The corpus's longest file (10 min, 19 MB as 16-bit WAV) must pass the upload limit.
    args["audio"] = {"max_upload_bytes": 512 * 2**20, "max_duration_s": 4 * 3600.0}
    return args


def job_config(model: ModelSpec, opts: dict) -> dict:
    """The ``JobConfig`` of row 5: ``--job-config`` (default ``batch_cpu.yaml``: its actor
    pools, files per call and ``cpu_threads`` where it sets them) with this recognizer and
    row 4's batch settings."""
    import yaml

    path = Path(opts.get("job_config_path") or REPO / "ray_configs/batch_cpu.yaml")
    template = yaml.safe_load(path.read_text())["job"]
    template["models_dir"] = str(_models_dir())
    template["vad"] = {**template.get("vad", {}), "model": opts["vad_model"]}
    rec = recognizer_settings(model, opts)
    own_threads = template.get("recognizer", {}).get("cpu_threads")
    if opts["device"] == "cpu" and opts["layout"] == "config" and own_threads:
        rec["cpu_threads"] = int(own_threads)
    template["recognizer"] = rec
    if opts["device"] == "cuda":
        template["recognizer_pool"] = {**template["recognizer_pool"], "num_gpus": 1}
    return template


def job_env(opts: dict, job: dict | None = None) -> dict[str, str]:
    """Job-level env vars of row 5. Ray sets ``OMP_NUM_THREADS`` from an actor's
    ``num_cpus`` (1) unless it is set, and FunASR sizes torch's threads from it: a
    recognizer without its own ``cpu_threads`` would compute on one core of two. One that
    sets it (the shipped configs) runs with Ray's value: all cores for OpenMP in every
    actor made the decode + VAD actors slower."""
    own_threads = (job or {}).get("recognizer", {}).get("cpu_threads")
    if opts["layout"] == "config" and opts["device"] == "cpu" and not own_threads:
        return {"OMP_NUM_THREADS": str(opts["threads"])}
    return {}
