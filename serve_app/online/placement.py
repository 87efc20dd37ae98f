"""Can the app's replicas be placed at all? Checked before deploying, not after a hang.

A replica that asks for more than the cluster has is never scheduled: Serve keeps it
pending, ``/healthz`` stays 503 and requests wait for the proxy's timeout (tried: the
README's ``speakers:`` example added to the default config asks 1 CPU more than a 2-core
machine has left). :func:`replica_demand` lists what each deployment of an app config
asks for (the same settings :mod:`serve_app.online.app` binds) and :func:`unplaceable`
says, per deployment, what cannot fit on the nodes given: a replica larger than every
node, or the sum of the minimum replicas larger than the cluster. ``serve_app.online.run``
refuses to deploy such a config onto the fixed local cluster it starts, naming the
deployment and the resources; onto a cluster that may autoscale it warns instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serve_app.config import AppConfig, DeploymentSettings, resolve_models_dir
from serve_app.punctuation.stage import punctuation_for

# Serve's own default for a replica without ``num_cpus``.
SERVE_DEFAULT_NUM_CPUS = 1.0
SERVE_AUTO_MAX_REPLICAS = 100  # Serve's num_replicas="auto" default
_EPSILON = 1e-9


@dataclass(frozen=True)
class ReplicaDemand:
    deployment: str
    min_replicas: int
    resources: dict[str, float]  # per replica: CPU, GPU, memory (bytes), custom


def _per_replica(settings: DeploymentSettings) -> dict[str, float]:
    options = settings.ray_actor_options
    out = {"CPU": float(options.get("num_cpus", SERVE_DEFAULT_NUM_CPUS))}
    if options.get("num_gpus"):
        out["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        out["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        out[name] = float(amount)
    return {k: v for k, v in out.items() if v > 0}


def _min_replicas(settings: DeploymentSettings) -> int:
    if isinstance(settings.num_replicas, int):
        return settings.num_replicas
    autoscaling = settings.autoscaling_config or {}
    return int(autoscaling.get("min_replicas", 1))


def max_replicas(settings: DeploymentSettings) -> int:
    """The most replicas the deployment may have (fixed, or autoscaling's bound)."""
    if isinstance(settings.num_replicas, int):
        return settings.num_replicas
    autoscaling = settings.autoscaling_config or {}
    return int(autoscaling.get("max_replicas", SERVE_AUTO_MAX_REPLICAS))


def replica_demand(config: AppConfig) -> list[ReplicaDemand]:
    """Every deployment :func:`serve_app.online.app.build_app` makes of ``config``."""
    entries: list[tuple[str, DeploymentSettings]] = [
        ("AsrIngress", config.ingress.deployment),
        ("VadDeployment", config.vad_deployment),
    ]
    entries += [(f"Recognizer-{rec.name}", rec.deployment) for rec in config.recognizers]
    if config.speakers is not None:
        entries.append(("SpeakerDeployment", config.speakers.deployment))
    models_dir = Path(resolve_models_dir(config.models_dir))
    for rec in config.recognizers:
        punctuation = punctuation_for(rec, models_dir)
        if punctuation is not None:
            entries.append((f"Punctuation-{rec.name}", punctuation.deployment))
    return [ReplicaDemand(name, _min_replicas(s), _per_replica(s)) for name, s in entries]


def unplaceable(demand: list[ReplicaDemand], nodes: list[dict[str, float]]) -> list[str]:
    """What cannot be placed on ``nodes`` (each node's total resources), one line per
    problem, naming the deployment and the resources; empty when everything fits.

    First fit, largest replicas first, over the nodes' totals: a check of the config, not
    of what other apps already hold."""
    problems = []
    free = [dict(node) for node in nodes]
    replicas = [d for d in demand for _ in range(d.min_replicas)]
    replicas.sort(key=lambda d: -sum(d.resources.values()))
    left_out: list[ReplicaDemand] = []
    for item in replicas:
        if not any(_fits(item.resources, node) for node in nodes):
            line = (
                f"{item.deployment}: a replica asks for {_fmt(item.resources)}, more than any "
                f"node has ({'; '.join(_fmt(n) for n in nodes) or 'no node'})"
            )
            if line not in problems:
                problems.append(line)
            continue
        node = next((n for n in free if _fits(item.resources, n)), None)
        if node is None:
            left_out.append(item)
            continue
        for key, amount in item.resources.items():
            node[key] = node.get(key, 0.0) - amount
    if left_out:
        asks = ", ".join(f"{d.deployment} {d.min_replicas} x ({_fmt(d.resources)})" for d in demand)
        total = _sum([d.resources for d in replicas])
        problems.append(
            f"the replicas do not all fit: the app asks for {_fmt(total)} in all ({asks}), "
            f"the cluster has {_fmt(_sum(nodes))}; lower num_cpus or num_replicas in the "
            "deployments' ray_actor_options, or add nodes"
        )
    return problems


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(key, 0.0) + _EPSILON >= amount for key, amount in need.items())


def _sum(rows: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        for key, amount in row.items():
            out[key] = out.get(key, 0.0) + amount
    return out


def _fmt(resources: dict[str, float]) -> str:
    parts = []
    for key, amount in sorted(resources.items()):
        if key in ("CPU", "GPU"):
            parts.append(f"{key} {amount:g}")
        elif key == "memory":
            parts.append(f"memory {amount / 2**30:.1f} GiB")
        elif not key.startswith(("node:", "accelerator_type")) and key != "object_store_memory":
            parts.append(f"{key} {amount:g}")
    return ", ".join(parts) or "nothing"
