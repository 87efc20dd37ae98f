from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig, load_app_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ray_configs"
SERVE_CONFIGS = sorted(
    p for p in CONFIG_DIR.glob("*.yaml") if "applications" in yaml.safe_load(p.read_text())
)
ALL_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "serve.yaml" for p in SERVE_CONFIGS)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads(path):
    raw = yaml.safe_load(path.read_text())
    if "job" in raw:  # a Ray Data job config (serve_app.batch.config)
        from serve_app.batch.config import load_job_config

        assert load_job_config(path).recognizer
        return
    if "applications" in raw:
        ServeDeploySchema.model_validate(raw)  # Ray's own schema
        for app in raw["applications"]:
            assert app["import_path"] == "serve_app.online.app:build_app"
    config = load_app_config(path)
    assert config.recognizers


def _minimal(**recognizer):
    base = {"name": "m", "backend": "whisper", "model": "x"}
    return {"recognizers": [{**base, **recognizer}]}


def test_unknown_keys_rejected():
    with pytest.raises(ValidationError):
        AppConfig.model_validate({**_minimal(), "typo": 1})
    with pytest.raises(ValidationError, match="autoscaling_config"):
        AppConfig.model_validate(
            _minimal(deployment={"num_replicas": None, "autoscaling_config": {"max_replica": 2}})
        )


def test_batch_must_fit_max_ongoing_requests():
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        AppConfig.model_validate(
            _minimal(batch={"max_batch_items": 32}, deployment={"max_ongoing_requests": 8})
        )


def test_batch_capacity_must_hold_longest_segment():
    with pytest.raises(ValidationError, match="max_segment_s"):
        AppConfig.model_validate({**_minimal(batch={"max_batch_audio_s": 10}, pack_segments_s=0)})


def test_segment_packing_defaults_by_backend_and_fits_the_window():
    whisper = AppConfig.model_validate(_minimal(backend="whisper")).recognizers[0]
    assert whisper.segment_pack_s == 30.0  # the encoder runs 30 s windows anyway
    funasr = AppConfig.model_validate(_minimal(backend="funasr")).recognizers[0]
    assert funasr.segment_pack_s == 0.0  # cost grows with length: pauses would be paid
    assert (
        AppConfig.model_validate(_minimal(backend="whisper", pack_segments_s=0))
        .recognizers[0]
        .segment_pack_s
        == 0.0
    )
    with pytest.raises(ValidationError, match="Whisper's window"):
        AppConfig.model_validate(_minimal(backend="whisper", pack_segments_s=45))


def test_which_models_get_the_coverage_check_and_re_decode():
    rounds = {
        backend: AppConfig.model_validate(_minimal(backend=backend)).recognizers[0].redecode_rounds
        for backend in ("whisper", "moonshine", "funasr")
    }
    # Only packed items: timestamps say where speech is missing (Moonshine has none).
    assert rounds == {"whisper": 2, "moonshine": 0, "funasr": 0}
    with pytest.raises(ValidationError, match="its window"):
        AppConfig.model_validate({**_minimal(backend="whisper"), "vad": {"max_segment_s": 40}})


def test_cheaper_partials_are_per_backend():
    whisper = AppConfig.model_validate(_minimal(backend="whisper", partial_window_s=10))
    assert whisper.recognizers[0].partial_window_s == 10
    with pytest.raises(ValidationError, match="partial_window_s is for the whisper"):
        AppConfig.model_validate(_minimal(backend="moonshine", partial_window_s=10))
    with pytest.raises(ValidationError, match="partial_precision is for the moonshine"):
        AppConfig.model_validate(_minimal(backend="whisper", partial_precision="int8"))
    with pytest.raises(ValidationError, match="greater than or equal to 5"):
        AppConfig.model_validate(_minimal(backend="whisper", partial_window_s=2))


def test_half_precision_needs_gpu():
    with pytest.raises(ValidationError, match="cuda"):
        AppConfig.model_validate(_minimal(backend="funasr", precision="fp16"))


def test_duplicate_model_names_rejected():
    rec = {"name": "m", "backend": "whisper", "model": "x", "aliases": ["whisper-1"]}
    other = {"name": "whisper-1", "backend": "whisper", "model": "y"}
    with pytest.raises(ValidationError, match="twice"):
        AppConfig.model_validate({"recognizers": [rec, other]})


def test_model_threads_knob(monkeypatch):
    from serve_app.core.modelref import CPU_THREADS_ENV, model_cpu_threads

    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    assert model_cpu_threads(0) == 0  # the library's default
    monkeypatch.setenv(CPU_THREADS_ENV, "2")
    assert model_cpu_threads(0) == 2
    assert model_cpu_threads(3) == 3  # the config wins
    monkeypatch.setenv(CPU_THREADS_ENV, "-1")
    with pytest.raises(ValueError):
        model_cpu_threads(0)


def test_every_serve_config_caps_malloc_arenas():
    """Without the cap a long-running replica's RSS grows (docs/BENCHMARKS.md, "Soak")."""

    repo = Path(__file__).resolve().parents[2]
    configs = sorted((repo / "ray_configs").glob("serve*.yaml"))
    configs += sorted((repo / "ray_configs").glob("tuned_cpu_*.yaml"))
    assert configs
    for path in configs:
        for app in yaml.safe_load(path.read_text())["applications"]:
            env = (app.get("runtime_env") or {}).get("env_vars") or {}
            assert env.get("MALLOC_ARENA_MAX") == "2", path.name
    assert "ENV MALLOC_ARENA_MAX=2" in (repo / "k8s" / "Dockerfile").read_text()


def _replica_shapes(config: AppConfig) -> list[tuple[str, int, float, float]]:
    """(deployment, replicas at start, CPUs, GPUs) of every deployment the app builds."""
    deployments = [("vad", config.vad_deployment), ("ingress", config.ingress.deployment)]
    if config.speakers is not None:
        deployments.append(("speakers", config.speakers.deployment))
    for rec in config.recognizers:
        deployments.append((rec.name, rec.deployment))
        if rec.punctuation is not None:
            deployments.append((f"punctuation-{rec.name}", rec.punctuation.deployment))
    out = []
    for name, dep in deployments:
        auto = dep.autoscaling_config or {}
        count = dep.num_replicas if isinstance(dep.num_replicas, int) else None
        replicas = auto.get("initial_replicas") or auto.get("min_replicas") or count or 1
        options = dep.ray_actor_options
        out.append(
            (name, int(replicas), float(options.get("num_cpus", 1)), options.get("num_gpus", 0))
        )
    return out


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_cpu_config_starts_on_a_2_cpu_machine(path):
    """A CPU config whose replicas ask for more than 2 CPUs in all never gets its last
    replica scheduled on the 2-core machines these configs are for: that model's requests
    wait until they time out (found with serve_multilingual.yaml, 2 x 1 CPU recognizers)."""
    shapes = _replica_shapes(load_app_config(path))
    if any(gpus for *_, gpus in shapes):
        return  # a GPU config: sized for a GPU node
    total = sum(replicas * cpus for _, replicas, cpus, _ in shapes)
    assert total <= 2.0, (path.name, total, shapes)


def test_every_diarization_knob_is_a_speakers_key() -> None:
    """One settings class per concern: ``speakers:`` takes every DiarizationSettings knob
    (not a mirrored subset), and the object the pipeline clusters with is that section."""
    from serve_app.config import DiarizationSettings, SpeakerSettings

    knobs = {"min_speaker_s": 3.0, "smoothing_windows": 5, "merge_centroid_distance": 0.2}
    config = AppConfig.model_validate(
        {"recognizers": [{"name": "m", "backend": "whisper", "model": "m"}], "speakers": knobs}
    )
    assert isinstance(config.speakers, DiarizationSettings)
    assert {k: getattr(config.speakers, k) for k in knobs} == knobs
    assert set(DiarizationSettings.model_fields) <= set(SpeakerSettings.model_fields)
    with pytest.raises(ValidationError, match="odd"):
        SpeakerSettings(smoothing_windows=2)
    with pytest.raises(ValidationError, match="hop_s"):
        DiarizationSettings(window_s=1.0, hop_s=1.5)


def test_the_ingress_keeps_request_slots_beside_its_live_sessions():
    from serve_app.config import IngressSettings

    ok = IngressSettings.model_validate(
        {"deployment": {"max_ongoing_requests": 40}, "realtime": {"max_sessions": 32}}
    )
    assert ok.realtime.max_sessions == 32
    with pytest.raises(ValidationError, match="max_sessions"):
        IngressSettings.model_validate(
            {"deployment": {"max_ongoing_requests": 32}, "realtime": {"max_sessions": 32}}
        )
    # Live sessions off: no slots to keep.
    IngressSettings.model_validate(
        {"deployment": {"max_ongoing_requests": 8}, "realtime": {"enabled": False}}
    )
