"""A config whose replicas cannot all be scheduled is named before it is deployed (no Ray).

Tried as a new user would: the README's ``speakers:`` example (1 CPU for the speaker
replica) added to the default config asks for 2.75 CPUs; on a 2-core machine the speaker
replica was never scheduled and ``/healthz`` stayed 503 for ever.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve_app.config import AppConfig
from serve_app.online.placement import replica_demand, unplaceable

REPO = Path(__file__).resolve().parents[2]
TWO_CORES = [{"CPU": 2.0, "memory": 20 * 2**30, "node:10.0.0.1": 1.0}]


def _args(path: str = "ray_configs/serve.yaml") -> dict:
    return yaml.safe_load((REPO / path).read_text())["applications"][0]["args"]


def test_the_default_config_with_speakers_fits_two_cores():
    config = AppConfig.model_validate(_args())
    assert config.speakers is not None and not config.speakers.diarize_by_default
    demand = replica_demand(config)
    assert {d.deployment for d in demand} >= {"AsrIngress", "SpeakerDeployment"}
    assert unplaceable(demand, TWO_CORES) == []


def test_the_readme_speakers_example_on_two_cores_is_named():
    args = _args()
    args["speakers"] = {  # as the README shows it: Serve's default of 1 CPU per replica
        "backend": "ge2e",
        "model": "ge2e-resemblyzer",
        "deployment": {"num_replicas": 1, "max_ongoing_requests": 256},
    }
    problems = unplaceable(replica_demand(AppConfig.model_validate(args)), TWO_CORES)
    assert len(problems) == 1
    assert "SpeakerDeployment 1 x (CPU 1)" in problems[0]
    assert "CPU 2.75 in all" in problems[0] and "the cluster has CPU 2," in problems[0]


def test_a_replica_larger_than_every_node_is_named_with_what_it_asks():
    args = copy.deepcopy(_args())
    args["recognizers"][0]["deployment"]["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    problems = unplaceable(replica_demand(AppConfig.model_validate(args)), TWO_CORES)
    assert problems == [
        "Recognizer-whisper-tiny.en: a replica asks for CPU 1, GPU 1, more than any node "
        "has (CPU 2, memory 20.0 GiB)"
    ]


@pytest.mark.parametrize("path", ["ray_configs/serve_paraformer_gpu.yaml"])
def test_autoscaled_deployments_count_their_minimum(path):
    demand = {d.deployment: d for d in replica_demand(AppConfig.model_validate(_args(path)))}
    assert demand["SpeakerDeployment"].min_replicas == 1
    gpu_node = [{"CPU": 16.0, "GPU": 1.0}]
    assert unplaceable(list(demand.values()), gpu_node) == []
