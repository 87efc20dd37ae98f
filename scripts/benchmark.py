"""Side-by-side throughput benchmark: FunASR's own paths against this project's.

One run, one generated corpus (``scripts/bench_corpus.py``: recordings of 5 s to 10 min
with pauses, 30 min by default, cached on disk) and the same model files for every row:

    1  library, one file at a time   FunASR ``AutoModel.generate(file)`` (no VAD, its default
                                      batch_size=1 path) | faster-whisper ``transcribe(file)``
                                      (sequential, greedy)
    2  library's own batching         FunASR ``AutoModel`` + fsmn-vad + ``batch_size_s`` |
                                      faster-whisper ``BatchedInferencePipeline``
    3  funasr-server                  FunASR's OpenAI-compatible server, C HTTP clients
                                      (FunASR models only: it cannot serve CTranslate2)
    4  this project, Ray Serve        ``serve_app.app:build_app``, the same C HTTP clients
    5  this project, Ray Data         ``serve_app.transcribe_job.run_job`` over a manifest
    6  floor                          the backend's forward pass alone on pre-decoded VAD
                                      segments, sorted and packed (``BatchedRecognizer``)

Every row runs in its own child process (clean memory figures, its own Ray cluster where it
needs one, started with ``ray.init(address="local")`` and shut down after: never another
engineer's cluster). Before each row the script waits until the 1-minute load average is
below ``--max-load``, and it records the load and the CPU that processes outside the row
used meanwhile. It prints, per row: RTFx (corpus audio seconds / wall seconds), p50/p95/p99
latency (per file for rows 1-2, per HTTP request for rows 3-4), the batch-size
distribution, padding efficiency (real / padded audio), peak memory (RSS summed over the
row's process tree, sampled; GPU: ``torch.cuda.max_memory_allocated`` in-process, else
``nvidia-smi``), and the ratios 4/1, 4/3, 4/6, 5/2, 5/6 against their targets.

    python scripts/benchmark.py                       # 30 min corpus, both models, all rows
    python scripts/benchmark.py --corpus-minutes 5 --models whisper-tiny.en --rows 1,4,6
    python scripts/benchmark.py --device cuda --precision fp16 --concurrency 64

See docs/BENCHMARKS.md for the figures and how they were taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench_corpus  # noqa: E402

ROWS = ("1", "2", "3", "4", "5", "6")
ROW_TITLES = {
    "1": "library, one file at a time",
    "2": "library's own batching",
    "3": "funasr-server (C clients)",
    "4": "this project: Ray Serve (C clients)",
    "5": "this project: Ray Data job",
    "6": "floor: forward on sorted batches",
}
# (numerator row, denominator row, target or None)
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("4", "1", 1.4),
    ("4", "3", None),
    ("4", "6", 0.85),
    ("5", "2", None),
    ("5", "6", 0.9),
)
WHISPER_WINDOW_S = 30.0
DEFAULT_RESULTS_DIR = Path("/tmp/asr-bench-results")
RANDOM_MODELS_DIR = Path("/tmp/rm")


# -- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: the same files for every row."""

    name: str
    backend: str  # "funasr" | "whisper"
    path: str
    language: str | None = None

    @property
    def is_whisper(self) -> bool:
        return self.backend == "whisper"


def _models_dir() -> Path:
    from serve_app.config import resolve_models_dir

    return resolve_models_dir(None)


def _random_funasr_model(name: str) -> str:
    """A random-weight FunASR folder (``make_random_funasr_models.py``), made if missing.

    Looked up in ``<models dir>/random/`` (where this script generates it) and /tmp/rm.
    """
    for root in (_models_dir() / "random", RANDOM_MODELS_DIR):
        if (root / name / "model.pt").exists():
            return str(root / name)
    out = _models_dir() / "random"
    print(f"generating random-weight {name} into {out} ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "make_random_funasr_models.py"),
            "--out",
            str(out),
            "--models",
            name,
        ],
        check=True,
    )
    return str(out / name)


def resolve_model(name: str, overrides: dict[str, str]) -> ModelSpec:
    """Known names: paraformer-large, paraformer-tiny (random weights), whisper-tiny.en."""
    if name.startswith("paraformer"):
        path = overrides.get(name) or _random_funasr_model(name)
        return ModelSpec(name=name, backend="funasr", path=path)
    if name.startswith("whisper"):
        path = overrides.get(name) or str(_models_dir() / name)
        if not Path(path).is_dir():
            raise SystemExit(f"{path} missing: run scripts/provision_models.py")
        return ModelSpec(name=name, backend="whisper", path=path, language="en")
    raise SystemExit(f"unknown model {name!r} (paraformer-large, paraformer-tiny, whisper-tiny.en)")


# -- batch settings and app/job configs -------------------------------------------------------

BUILTIN_BATCH = {
    # CPU defaults when no tuned config exists (scripts/tune_batch.py writes those).
    "funasr": {
        "max_batch_audio_s": 240.0,
        "max_batch_items": 32,
        "batch_wait_timeout_s": 0.05,
        "max_forward_audio_s": 240.0,
    },
    "whisper": {
        "max_batch_audio_s": 480.0,
        "max_batch_items": 16,
        "batch_wait_timeout_s": 0.05,
        "max_forward_audio_s": 480.0,
    },
}


def config_source(model: ModelSpec, device: str, config_path: str | None) -> Path:
    """The Serve config rows 2, 4, 5, 6 take their settings from.

    ``--batch-config``, else ``ray_configs/tuned_<device>_<model>.yaml`` (written by
    ``scripts/tune_batch.py``) when it exists, else ``ray_configs/serve.yaml``.
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


BUILTIN_BATCH = {
    # When no tuned config exists (scripts/tune_batch.py writes those).
    "funasr": {
        "max_batch_audio_s": 480.0,
        "max_batch_items": 32,
        "batch_wait_timeout_s": 0.05,
        "max_forward_audio_s": 60.0,
    },
    "whisper": {
        "max_batch_audio_s": 480.0,
        "max_batch_items": 16,
        "batch_wait_timeout_s": 0.05,
        "max_forward_audio_s": 480.0,
    },
}


def recognizer_settings(model: ModelSpec, opts: dict) -> dict:
    """A ``RecognizerSettings`` dict (without deployment) for this model, rows 4, 5, 6."""
    rec: dict[str, Any] = {
        "name": model.name,
        "backend": model.backend,
        "model": model.path,
        "device": opts["device"],
        "precision": _precision(model, opts),
        "language": model.language,
        "batch": opts["batch"],
    }
    if opts["device"] == "cpu":
        # "shipped": 0 = follow OMP_NUM_THREADS, which Ray sets from num_cpus (1 thread).
        rec["cpu_threads"] = opts["threads"] if opts["layout"] == "config" else 0
    return rec


def _precision(model: ModelSpec, opts: dict) -> str:
    if opts["precision"]:
        return opts["precision"]
    if opts["device"] == "cuda":
        return "fp16"
    return "int8" if model.is_whisper else "fp32"


def serve_app_config(model: ModelSpec, opts: dict) -> dict:
    """The ``AppConfig`` of row 4: the source Serve config, serving this model.

    ``layout="config"``: the source config's deployments as they are (a tuned config gives
    the recognizer replica all cores: ``OMP_NUM_THREADS`` in its runtime_env, Whisper's
    ``cpu_threads``); a source without them (``serve.yaml``) gets what the tuner would
    write. ``layout="shipped"``: the deployments of ``ray_configs/serve.yaml`` untouched.
    """
    import copy

    import yaml

    source = (
        Path(opts["config_path"]) if opts["layout"] == "config" else REPO / "ray_configs/serve.yaml"
    )
    args = copy.deepcopy(yaml.safe_load(source.read_text())["applications"][0]["args"])
    template_rec = _source_recognizer(model, source)
    deployment = copy.deepcopy(template_rec.get("deployment", {}))
    items = int(opts["batch"]["max_batch_items"])
    deployment["max_ongoing_requests"] = max(
        int(deployment.get("max_ongoing_requests") or 0), 2 * items
    )
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
    args["recognizers"] = [rec]
    args["models_dir"] = str(_models_dir())
    args["vad"] = {**args.get("vad", {}), "model": opts["vad_model"]}
    args.setdefault("ingress", {})["default_model"] = model.name
    # The corpus's longest file (10 min, 19 MB as 16-bit WAV) must pass the upload limit.
    args["audio"] = {"max_upload_bytes": 512 * 2**20, "max_duration_s": 4 * 3600.0}
    return args


def job_config(model: ModelSpec, opts: dict) -> dict:
    """The ``JobConfig`` of row 5: ``ray_configs/batch_cpu.yaml`` with this recognizer.

    The actor pools are batch_cpu.yaml's. ``layout="config"`` runs the job with
    ``OMP_NUM_THREADS`` = all cores (see ``job_env``), as the tuned Serve config does.
    """
    import yaml

    template = yaml.safe_load((REPO / "ray_configs/batch_cpu.yaml").read_text())["job"]
    template["models_dir"] = str(_models_dir())
    template["vad"] = {**template.get("vad", {}), "model": opts["vad_model"]}
    rec = recognizer_settings(model, opts)
    template["recognizer"] = rec
    if opts["device"] == "cuda":
        template["recognizer_pool"] = {**template["recognizer_pool"], "num_gpus": 1}
    return template


def job_env(opts: dict) -> dict[str, str]:
    """Job-level env vars of row 5 (``ray job submit --runtime-env-json``'s ``env_vars``).

    Ray sets ``OMP_NUM_THREADS`` from an actor's ``num_cpus`` (1 in batch_cpu.yaml) unless
    it is set, and FunASR sizes torch's thread pool from it: without this the recognizer
    actor computes on one core of two.
    """
    if opts["layout"] == "config" and opts["device"] == "cpu":
        return {"OMP_NUM_THREADS": str(opts["threads"])}
    return {}


# -- measurement helpers --------------------------------------------------------------------


def _psutil() -> Any:
    """psutil ships inside Ray (``ray/thirdparty_files``), which puts it on sys.path."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class BatchRecord:
    """Forward passes of one row: items per pass and real / padded audio."""

    sizes: Counter = field(default_factory=Counter)
    real_s: float = 0.0
    padded_s: float = 0.0

    def add(self, size: int, real_s: float, padded_s: float) -> None:
        self.sizes[int(size)] += 1
        self.real_s += real_s
        self.padded_s += padded_s

    def summary(self) -> dict:
        return {
            "batch_size_counts": {str(k): v for k, v in sorted(self.sizes.items())},
            "padding_efficiency": round(self.real_s / self.padded_s, 4) if self.padded_s else None,
        }


def whisper_padded_s(items: int) -> float:
    """Whisper computes every item as a whole 30 s window, whatever the segment length."""
    return WHISPER_WINDOW_S * items


class TreeSampler:
    """Samples the RSS of a process tree (and GPU memory) while a row runs.

    Also integrates the CPU time used by processes *outside* the tree (other engineers'
    jobs): ``foreign_cores`` is their average number of busy cores during the row.
    """

    def __init__(
        self, root_pid: int, *, interval_s: float = 0.5, rescan_every: int = 4, gpu: bool = False
    ) -> None:
        self._psutil = _psutil()
        self._self = self._psutil.Process()
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.rescan_every = rescan_every
        self._samples = 0
        self._procs: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self.gpu = gpu
        self.peak_rss = 0
        self.peak_ray_workers_rss = 0
        self.peak_gpu_mib: float | None = None
        self.pids: dict[int, float] = {}  # pid -> create_time, to never kill a reused pid
        self.loads: list[float] = []
        self._tree_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sys_busy0 = self._system_busy_s()
        self._self_cpu0 = sum(self._self.cpu_times()[:2])
        self._started = time.monotonic()

    def _system_busy_s(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._elapsed = time.monotonic() - self._started
        self._sys_busy = self._system_busy_s() - self._sys_busy0
        self._self_cpu = sum(self._self.cpu_times()[:2]) - self._self_cpu0

    def _run(self) -> None:
        last_gpu = 0.0
        while not self._stop.is_set():
            self.sample()
            if self.gpu and time.monotonic() - last_gpu > 1.0:
                last_gpu = time.monotonic()
                used = _nvidia_smi_used_mib()
                if used is not None:
                    self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, used)
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        """One sample. Cheap on purpose: the sampler must not steal the row's CPU (on two
        cores, every slice taken from an OpenMP thread stalls its partner at the next
        barrier), so the tree is rescanned every few samples and Process objects kept."""
        ps = self._psutil
        self._samples += 1
        if self._samples % self.rescan_every == 1 or not self._procs:
            try:
                root = ps.Process(self.root_pid)
                found = [root, *root.children(recursive=True)]
            except ps.Error:
                found = []
            for p in found:
                if p.pid in self._procs:
                    # Ray workers retitle themselves (ray::IDLE -> ray::Actor) after start.
                    with contextlib.suppress(ps.Error):
                        self._names[p.pid] = p.name()
                else:
                    try:
                        self.pids.setdefault(p.pid, p.create_time())
                        self._names[p.pid] = p.name()
                    except ps.Error:
                        continue
                    self._procs[p.pid] = p
        total = workers = 0
        for pid, p in list(self._procs.items()):
            try:
                rss = p.memory_info().rss
                cpu = p.cpu_times()
            except ps.Error:
                del self._procs[pid]
                continue
            self._tree_cpu[pid] = cpu.user + cpu.system
            total += rss
            if self._names.get(pid, "").startswith("ray::"):
                workers += rss
        self.peak_rss = max(self.peak_rss, total)
        self.peak_ray_workers_rss = max(self.peak_ray_workers_rss, workers)
        self.loads.append(os.getloadavg()[0])

    @property
    def foreign_cores(self) -> float:
        own = sum(self._tree_cpu.values()) + self._self_cpu
        return max(0.0, (self._sys_busy - own) / self._elapsed) if self._elapsed else 0.0


def _nvidia_smi_used_mib() -> float | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return sum(float(x) for x in out.split())
    except (subprocess.SubprocessError, ValueError):
        return None


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, bool]:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return load, True
        if time.monotonic() >= deadline:
            return load, False
        if not announced:
            print(f"  waiting for load average < {max_load} (now {load:.2f}) ...", flush=True)
            announced = True
        time.sleep(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- row workers (run in a child process) --------------------------------------------------


def _corpus(spec: dict) -> bench_corpus.Corpus:
    c = spec["corpus"]
    return bench_corpus.build_corpus(c["minutes"], root=Path(c["root"]), seed=c["seed"])


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _gpu_peak_mib(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _quiet_funasr() -> contextlib.AbstractContextManager:
    """FunASR prints import notices and progress to stdout: keep the row's output clean."""
    return contextlib.redirect_stdout(sys.stderr)


def _record_funasr_batches(module: Any, record: BatchRecord) -> None:
    """Wrap a FunASR model's ``inference`` to log items per forward and padding."""
    inner = module.inference

    def inference(data_in: Any, *args: Any, **kwargs: Any) -> Any:
        items = data_in if isinstance(data_in, (list, tuple)) else [data_in]
        lengths = [_item_seconds(x) for x in items]
        record.add(len(items), sum(lengths), max(lengths, default=0.0) * len(items))
        return inner(data_in, *args, **kwargs)

    module.inference = inference


def _item_seconds(item: Any) -> float:
    """Seconds of one FunASR input: a file path (row 1) or a waveform (VAD segments)."""
    if isinstance(item, (str, Path)):
        import soundfile as sf

        return float(sf.info(str(item)).duration)
    return len(item) / 16000 if hasattr(item, "__len__") else 0.0


def row_funasr_automodel(spec: dict, *, with_vad: bool) -> dict:
    """Rows 1 and 2 (FunASR): ``AutoModel.generate`` one file per call."""
    from funasr import AutoModel

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    device = spec["device"]
    kwargs: dict[str, Any] = {
        "model": model.path,
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
        "ncpu": spec["threads"],
    }
    notes = []
    if device == "cuda":
        kwargs["device"] = "cuda"
        if spec["precision"] in ("fp16", "bf16"):
            kwargs[spec["precision"]] = True
    elif with_vad:
        # AutoModel turns batch_size_s off when its device string is exactly "cpu"
        # (inference_with_vad: `if kwargs["device"] == "cpu": batch_size = 0`); "cpu:0" is
        # the same device and keeps FunASR's own batching on, which is what row 2 measures.
        kwargs["device"] = "cpu:0"
        notes.append('device "cpu:0" so that AutoModel keeps batch_size_s batching on CPU')
    else:
        kwargs["device"] = "cpu"
    generate_kwargs: dict[str, Any] = {}
    if with_vad:
        kwargs["vad_model"] = spec["vad_path"]
        # The same cut as this project's VAD step and funasr-server: segments <= 30 s.
        kwargs["vad_kwargs"] = {"max_single_segment_time": int(spec["vad"]["max_segment_s"] * 1000)}
        generate_kwargs["batch_size_s"] = int(spec["batch"]["max_forward_audio_s"])
        notes.append(
            f"batch_size_s={generate_kwargs['batch_size_s']} (= max_forward_audio_s), "
            "batch_size_threshold_s=60 (default)"
        )
    with _quiet_funasr():
        auto = AutoModel(**kwargs)
        record = BatchRecord()
        warm = _noise_wav(Path(spec["tmp"]))
        auto.generate(input=str(warm), **generate_kwargs)  # warm-up, not timed
        _record_funasr_batches(auto.model, record)
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        latencies = []
        started = time.perf_counter()
        for f in corpus.files:
            t0 = time.perf_counter()
            auto.generate(input=f.path, **generate_kwargs)
            latencies.append(time.perf_counter() - t0)
        wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": latencies,
        **record.summary(),
        "gpu_peak_mib": _gpu_peak_mib(device),
        "notes": notes,
        "timing_scope": "sum over files of AutoModel.generate(file) (model loaded, warmed up)",
    }


def _whisper_model(spec: dict) -> Any:
    from faster_whisper import WhisperModel

    from serve_app.recognizers.whisper_backend import resolve_compute_type

    model = ModelSpec(**spec["model"])
    return WhisperModel(
        model.path,
        device=spec["device"],
        compute_type=resolve_compute_type(spec["precision"], spec["device"]),
        cpu_threads=spec["threads"] if spec["device"] == "cpu" else 0,
    )


def row_whisper_sequential(spec: dict) -> dict:
    """Row 1 (Whisper): faster-whisper ``transcribe`` one file at a time, greedy."""
    corpus = _corpus(spec)
    wm = _whisper_model(spec)
    record = BatchRecord()
    inner = wm.encode

    def encode(features: Any, *args: Any, **kwargs: Any) -> Any:
        record.add(1, 0.0, WHISPER_WINDOW_S)  # one 30 s window per call
        return inner(features, *args, **kwargs)

    segments, _ = wm.transcribe(str(_noise_wav(Path(spec["tmp"]))), beam_size=1, language="en")
    list(segments)  # warm-up
    wm.encode = encode
    latencies = []
    started = time.perf_counter()
    for f in corpus.files:
        t0 = time.perf_counter()
        segments, _ = wm.transcribe(f.path, beam_size=1, language="en")
        list(segments)  # the generator does the work
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    record.real_s = corpus.total_s  # every second of every file is encoded
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": latencies,
        **record.summary(),
        "notes": ["WhisperModel.transcribe(beam_size=1, language='en'), no VAD, defaults else"],
        "timing_scope": "sum over files of transcribe(file) incl. decode (model loaded)",
    }


def row_whisper_batched(spec: dict) -> dict:
    """Row 2 (Whisper): faster-whisper's own ``BatchedInferencePipeline`` (Silero VAD)."""
    from faster_whisper import BatchedInferencePipeline

    corpus = _corpus(spec)
    wm = _whisper_model(spec)
    pipeline = BatchedInferencePipeline(wm)
    batch_size = int(spec["batch"]["max_batch_items"])
    record = BatchRecord()
    inner = pipeline.forward

    def forward(features: Any, tokenizer: Any, chunks_metadata: Any, options: Any) -> Any:
        real = sum(float(c["duration"]) for c in chunks_metadata)
        record.add(len(chunks_metadata), real, whisper_padded_s(len(chunks_metadata)))
        return inner(features, tokenizer, chunks_metadata, options)

    run = {"batch_size": batch_size, "beam_size": 1, "language": "en"}
    segments, _ = pipeline.transcribe(str(_noise_wav(Path(spec["tmp"]))), **run)
    list(segments)
    pipeline.forward = forward
    latencies = []
    started = time.perf_counter()
    for f in corpus.files:
        t0 = time.perf_counter()
        segments, _ = pipeline.transcribe(f.path, **run)
        list(segments)
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": latencies,
        **record.summary(),
        "notes": [f"BatchedInferencePipeline.transcribe(batch_size={batch_size}, beam_size=1)"],
        "timing_scope": "sum over files of transcribe(file) incl. decode + Silero VAD",
    }


def _noise_wav(tmp: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp / "warmup.wav"
    if not path.exists():
        rng = np.random.default_rng(0)
        sf.write(path, (rng.normal(0, 0.01, 32000)).astype("float32"), 16000)
    return path


def _loadgen() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("loadgen", SCRIPTS / "loadgen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _http_load(url: str, corpus: bench_corpus.Corpus, spec: dict, model_field: str) -> dict:
    import asyncio

    loadgen = _loadgen()
    items = [(Path(f.path), "") for f in corpus.files]
    return asyncio.run(
        loadgen.run_load(
            url,
            items,
            concurrency=spec["concurrency"],
            model=model_field,
            repeats=1,
            timeout_s=spec["request_timeout_s"],
        )
    )


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def row_funasr_server(spec: dict) -> dict:
    """Row 3: ``funasr-server`` on the same model files, under C concurrent clients."""
    import httpx

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    tmp = Path(spec["tmp"])
    # funasr-server's VAD pipeline asks for "fsmn-vad" by hub name; FunASR resolves it to
    # this ModelScope id and skips the download when that path exists relative to the
    # working directory (download_from_ms: `if not os.path.exists(model_or_path)`), so the
    # server runs offline from a folder holding our fsmn-vad files under that id.
    seeded = tmp / "funasr-server-cwd"
    vad_dir = seeded / "iic" / "speech_fsmn_vad_zh-cn-16k-common-pytorch"
    vad_dir.parent.mkdir(parents=True, exist_ok=True)
    if not vad_dir.exists():
        vad_dir.symlink_to(spec["vad_path"], target_is_directory=True)
    port = _free_port()
    exe = shutil.which("funasr-server", path=str(Path(sys.executable).parent)) or "funasr-server"
    cmd = [
        exe,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        spec["device"],
        "--model-path",
        model.path,
    ]
    log = open(tmp / "funasr-server.log", "w")  # closed in the finally below
    proc = subprocess.Popen(
        cmd,
        cwd=seeded,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MODELSCOPE_CACHE": str(seeded / "ms-cache")},
    )
    url = f"http://127.0.0.1:{port}"
    # With --model-path the server answers model "custom" WITHOUT VAD (one forward over the
    # whole file); the model field "sensevoice" selects its VAD config (fsmn-vad,
    # max_single_segment_time 30 s) with --model-path's weights: that is the server's own
    # long-audio path, comparable to rows 2 and 4.
    model_field = "sensevoice"
    try:
        _wait_http(f"{url}/health", spec["startup_timeout_s"], proc)
        warm = _noise_wav(tmp)
        resp = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("w.wav", warm.read_bytes(), "audio/wav")},
            data={"model": model_field},
            timeout=spec["startup_timeout_s"],
        )
        resp.raise_for_status()
        result = _http_load(url, corpus, spec, model_field)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if result["errors"]:
        raise RuntimeError(f"funasr-server errors: {result['errors'][:3]}")
    return {
        "wall_s": result["wall_s"],
        "audio_s": corpus.total_s,
        "latencies_s": result["latencies"],
        "batch_size_counts": None,
        "padding_efficiency": None,
        "notes": [
            "funasr-server --model-path <same folder>, model field 'sensevoice' = its VAD path",
            "it calls AutoModel.generate(batch_size=1) inside an async handler: requests run "
            "one at a time; on CPU AutoModel also disables batch_size_s",
            "AutoModel's default ncpu=4 torch threads (not settable from the CLI)",
        ],
        "timing_scope": "first request sent -> last response (server up, warmed up)",
    }


def _start_ray(spec: dict, **extra: Any) -> Any:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env_vars = {"RAY_AUTH_MODE": "disabled", **extra.pop("env_vars", {})}
    runtime_env = {"env_vars": env_vars, **extra.pop("runtime_env", {})}
    ray.init(
        address="local",  # always a new cluster of our own, never someone else's
        num_cpus=spec["threads"],
        num_gpus=1 if spec["device"] == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=runtime_env,
    )
    return ray


def row_serve(spec: dict) -> dict:
    """Row 4: this project's Serve app (``build_app``) under C concurrent HTTP clients."""
    import httpx

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    ray = _start_ray(spec)
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import AppConfig

    serve_config = spec["serve_config"]
    if "model-actor" in spec["experiments"]:
        import serve_app.app as app_module

        app_module.RecognizerDeployment = _model_actor_deployment()  # type: ignore[attr-defined]
    if set(spec["experiments"]) - {"model-actor"}:
        # Setup hooks are job-level: Serve replicas only get the env vars.
        serve_config = _with_hook(serve_config, _hook_env(spec["experiments"], None))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = AppConfig.model_validate(serve_config)
        serve.run(build_app(config), name="bench", route_prefix="/", blocking=False)
        _wait_http(f"{url}/healthz", spec["startup_timeout_s"])
        warm = _noise_wav(Path(spec["tmp"]))
        # Warm-up through the whole path (ingress, VAD, recognizer), not timed.
        for _ in range(2):
            httpx.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": ("w.wav", warm.read_bytes(), "audio/wav")},
                data={"model": model.name},
                timeout=spec["startup_timeout_s"],
            ).raise_for_status()
        cpu_before = cpu_by_process()
        result = _http_load(url, corpus, spec, model.name)
        cpu_core_s = cpu_breakdown(cpu_before, cpu_by_process())
        stats = _loadgen().stats_delta(result["before"], result["after"], model.name)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
    if result["errors"]:
        raise RuntimeError(f"serve errors: {result['errors'][:3]}")
    counts = {str(k): v for k, v in stats["batch_size_counts"].items()}
    real_s = result["after"][model.name]["audio_s"] - result["before"][model.name]["audio_s"]
    items = sum(int(k) * v for k, v in counts.items())
    padding = stats["padding_efficiency"]
    if model.is_whisper and items:
        padding = real_s / whisper_padded_s(items)
    return {
        "wall_s": result["wall_s"],
        "audio_s": result["audio_s"],
        "latencies_s": result["latencies"],
        "batch_size_counts": counts,
        "padding_efficiency": round(padding, 4) if padding == padding else None,
        "recognizer_busy_s": stats["recognizer_busy_s"],
        "speech_s": real_s,
        "cpu_core_s": cpu_core_s,
        "notes": [
            "batch sizes: items per dynamic batch (/v1/stats)",
            "CPU core-seconds in the timed window: "
            + ", ".join(f"{name} {value:g}" for name, value in cpu_core_s.items()),
        ],
        "timing_scope": "first request sent -> last response (app up, warmed up)",
    }


EXPERIMENTS = {
    # A/B switches for proposed fixes to shared code, applied in the Ray workers of rows 4
    # and 5 by a worker_process_setup_hook, so they can be measured without editing them.
    "omp-passive": "OMP_WAIT_POLICY=PASSIVE in every Ray worker (no OpenMP spin-waiting)",
    "model-actor": "the Serve recognizer replica runs the model in a plain Ray actor of its "
    "own (sync, main thread) instead of in the replica process",
}


def _setup_hook(stats_path: str | None, experiments: Sequence[str]) -> Callable[[], None]:
    """A Ray ``worker_process_setup_hook`` for rows 4 and 5.

    With ``stats_path`` it logs every ``BatchedRecognizer.transcribe_batch`` (its
    ``BatchStats`` and start/end times) as JSON lines: Ray Data actors expose no batch
    statistics, so row 5 reports batch sizes and padding like row 6 this way. It also
    applies the ``experiments`` (see :data:`EXPERIMENTS`).
    """
    experiments = tuple(experiments)

    def hook() -> None:
        import json as _json
        import time as _time

        if stats_path is None:
            return
        from serve_app.recognizers import base

        inner = base.BatchedRecognizer.transcribe_batch

        def transcribe_batch(self: Any, jobs: Any) -> Any:
            t0 = _time.time()
            out = inner(self, jobs)
            s = self.last_stats
            line = {
                "t0": t0,
                "t1": _time.time(),
                "sizes": s.batch_sizes,
                "real_s": s.real_audio_s,
                "padded_s": s.padded_audio_s,
                "forward_s": s.forward_s,
            }
            with open(stats_path, "a") as fh:
                fh.write(_json.dumps(line) + "\n")
            return out

        base.BatchedRecognizer.transcribe_batch = transcribe_batch  # type: ignore[method-assign]

    return hook


def _model_actor_deployment() -> Any:
    """Experiment "model-actor": a ``RecognizerDeployment`` whose recognizer runs in a plain
    Ray actor of its own (tasks on that actor's main thread, no Serve machinery in its
    process), called once per dynamic batch; the replica keeps the batching, coalescing and
    metrics. This is the proposed change to serve_app/deployments/recognizer.py, built here
    (classes defined in a function travel by value to the replica) so it can be measured
    without editing that file."""
    import os as _os

    import ray as _ray
    from ray import serve as _serve

    from serve_app.deployments import recognizer as _rec

    class _Worker:
        def __init__(self, settings: Any, models_dir: Any) -> None:
            from serve_app.recognizers.factory import build_recognizer

            self._recognizer = build_recognizer(settings, models_dir)

        def transcribe_batch(self, jobs: Any) -> Any:
            return self._recognizer.transcribe_batch(jobs), self._recognizer.last_stats

    class _Proxy:
        def __init__(self, settings: Any, models_dir: Any) -> None:
            threads = _os.environ.get("OMP_NUM_THREADS", "1")
            self._actor = (
                _ray.remote(_Worker)
                .options(num_cpus=0, runtime_env={"env_vars": {"OMP_NUM_THREADS": threads}})
                .remote(settings, models_dir)
            )
            _ray.get(self._actor.__ray_ready__.remote())
            self.last_stats = None

        def transcribe_batch(self, jobs: Any) -> Any:
            results, self.last_stats = _ray.get(self._actor.transcribe_batch.remote(jobs))
            return results

        def validate(self, options: Any) -> None:
            # The benchmark sends default options only; the real change would keep this
            # check in the replica (it needs the backend's option rules, not its weights).
            return None

    base = _rec.RecognizerDeployment.func_or_class

    class ModelActorRecognizer(base):  # type: ignore[misc, valid-type]
        def __init__(self, settings: Any, models_dir: str) -> None:
            # The base class travels by value too (its module name resolves to the
            # Deployment, not the class): patch the globals its __init__ actually uses.
            scope = base.__init__.__globals__
            original = scope["build_recognizer"]
            scope["build_recognizer"] = _Proxy
            try:
                super().__init__(settings, models_dir)
            finally:
                scope["build_recognizer"] = original

    return _serve.deployment(ModelActorRecognizer)


def setup_hook_from_env() -> None:
    """The ``worker_process_setup_hook`` of row 5 (and of row 4's env-var experiments),
    configured by env vars.

    Given to Ray as the module path ``scripts.benchmark.setup_hook_from_env`` in the
    job-level runtime_env; the env vars reach every worker through it.
    """
    experiments = [e for e in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if e]
    _setup_hook(os.environ.get("BENCH_STATS_PATH") or None, experiments)()


def _hook_env(experiments: Sequence[str], stats_path: str | None) -> dict[str, Any]:
    """``_start_ray`` arguments installing :func:`setup_hook_from_env` in every worker."""
    env = {"BENCH_EXPERIMENTS": ",".join(experiments), **_experiment_env(experiments)}
    # Workers import serve_app from the installed package; the hook's module is found
    # through the repository root.
    path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    if stats_path:
        env["BENCH_STATS_PATH"] = stats_path
    return {
        "env_vars": env,
        "runtime_env": {"worker_process_setup_hook": "scripts.benchmark.setup_hook_from_env"},
    }


def _with_hook(app_args: dict, hook: dict) -> dict:
    """``app_args`` with the hook's runtime_env added to every deployment's actor options."""
    import copy

    args = copy.deepcopy(app_args)
    deployments = [args.setdefault("vad_deployment", {})]
    deployments.append(args.setdefault("ingress", {}).setdefault("deployment", {}))
    deployments += [rec.setdefault("deployment", {}) for rec in args["recognizers"]]
    for deployment in deployments:
        runtime_env = deployment.setdefault("ray_actor_options", {}).setdefault("runtime_env", {})
        runtime_env.update(hook["runtime_env"])
        runtime_env["env_vars"] = {**hook["env_vars"], **runtime_env.get("env_vars", {})}
    return args


def _experiment_env(experiments: Sequence[str]) -> dict[str, str]:
    return {"OMP_WAIT_POLICY": "PASSIVE"} if "omp-passive" in experiments else {}


def _process_label(p: Any) -> str:
    """A short role name for a process of the row (Ray retitles its workers)."""
    try:
        title = " ".join(p.cmdline()) or p.name()
    except Exception:
        return "gone"
    if title.startswith("ray::"):
        role = title.split()[0].removeprefix("ray::")
        for key in ("Recognizer", "Vad", "Ingress", "Proxy", "ServeController"):
            if key.lower() in role.lower():
                return {"Proxy": "serve proxy", "ServeController": "serve controller"}.get(
                    key, f"{key.lower()} replica"
                )
        return "ray other workers"
    if p.pid == os.getpid():
        return "benchmark + HTTP clients"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py"):
        if key in title:
            return "ray system"
    return "other"


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (role, user+system CPU seconds) for this process and all its descendants."""
    ps = _psutil()
    me = ps.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except ps.Error:
            continue
        out[p.pid] = (_process_label(p), t.user + t.system)
    return out


def cpu_breakdown(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU core-seconds per role between two :func:`cpu_by_process` snapshots."""
    by_role: dict[str, float] = {}
    for pid, (role, cpu_s) in after.items():
        by_role[role] = by_role.get(role, 0.0) + cpu_s - before.get(pid, (role, 0.0))[1]
    ranked = sorted(by_role.items(), key=lambda item: -item[1])
    return {role: round(value, 1) for role, value in ranked if value >= 0.05}


def row_ray_data(spec: dict) -> dict:
    """Row 5: this project's Ray Data job (``run_job``) over the corpus manifest."""
    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    tmp = Path(spec["tmp"])
    stats_path = tmp / "batch-stats.jsonl"
    output = tmp / "job-output"
    config_path = tmp / "job.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump({"job": spec["job_config"]}, sort_keys=False))
    hook = _hook_env(spec["experiments"], str(stats_path))
    hook["env_vars"].update(spec["job_env"])
    ray = _start_ray(spec, **hook)
    from serve_app.job_config import load_job_config
    from serve_app.transcribe_job import run_job

    try:
        config = load_job_config(config_path)
        started = time.time()
        summary = run_job(config, manifest=str(corpus.manifest), output=str(output))
    finally:
        ray.shutdown()
    if summary.failed or not summary.complete:
        raise RuntimeError(f"job incomplete: {summary.render()}")
    record = BatchRecord()
    first_call = None
    for line in stats_path.read_text().splitlines() if stats_path.exists() else []:
        entry = json.loads(line)
        first_call = entry["t0"] if first_call is None else min(first_call, entry["t0"])
        for size in entry["sizes"]:
            record.sizes[int(size)] += 1
        record.real_s += entry["real_s"]
        record.padded_s += entry["padded_s"]
    if model.is_whisper:
        record.padded_s = whisper_padded_s(sum(k * v for k, v in record.sizes.items()))
    steady_s = (started + summary.wall_s - first_call) if first_call else None
    return {
        "wall_s": summary.wall_s,
        "audio_s": summary.audio_s,
        "latencies_s": [],
        **record.summary(),
        "steady_wall_s": steady_s,
        "speech_s": record.real_s,
        "config_cli": (
            "python -m serve_app.transcribe_job --manifest "
            f"{corpus.manifest} --output OUT --config {config_path.name}"
        ),
        "notes": [
            "wall = run_job(): actor start + model load + warm-up + all files + Parquet write",
            "steady = first recognizer call -> end (excludes actor start and model load)",
        ],
        "timing_scope": "run_job() wall (Ray already started)",
    }


def row_floor(spec: dict) -> dict:
    """Row 6: the backend's forward alone on pre-decoded VAD segments, sorted and packed."""
    from serve_app.config import RecognizerSettings, VadSettings
    from serve_app.recognizers.base import BatchedRecognizer, SegmentJob
    from serve_app.recognizers.factory import build_backend

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    vad = VadSettings.model_validate(spec["vad"])  # the same VAD settings as rows 4 and 5
    with _quiet_funasr():
        spans = bench_corpus.vad_spans(
            corpus, vad_settings_json=vad.model_dump_json(), models_dir=_models_dir()
        )
    settings = RecognizerSettings.model_validate(recognizer_settings(model, spec))
    spans = bench_corpus.pack_spans(spans, settings.segment_pack_s)  # as the service does
    segments = bench_corpus.load_segments(corpus, spans)
    with _quiet_funasr():
        backend = build_backend(settings, _models_dir())
        _set_threads(spec["threads"])
        backend.warmup()  # type: ignore[attr-defined]
    runner = BatchedRecognizer(
        backend,
        max_batch_audio_s=settings.batch.max_forward_audio_s,
        max_batch_items=settings.batch.max_batch_items,
    )
    jobs = [SegmentJob(audio=samples) for _, samples in segments]
    if spec["device"] == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    cpu_before = cpu_by_process()
    started = time.perf_counter()
    results = runner.transcribe_batch(jobs)
    wall_s = time.perf_counter() - started
    cpu_core_s = cpu_breakdown(cpu_before, cpu_by_process())
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} segments failed: {failed[0]}")
    stats = runner.last_stats
    record = BatchRecord(
        sizes=Counter(stats.batch_sizes), real_s=stats.real_audio_s, padded_s=stats.padded_audio_s
    )
    if model.is_whisper:
        record.padded_s = whisper_padded_s(stats.num_items)
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": [],
        **record.summary(),
        "speech_s": stats.real_audio_s,
        "segments": len(jobs),
        "gpu_peak_mib": _gpu_peak_mib(spec["device"]),
        "cpu_core_s": cpu_core_s,
        "notes": [
            f"{len(jobs)} items ({stats.real_audio_s:.0f} s of audio)",
            f"CPU core-seconds in the timed window: {sum(cpu_core_s.values()):g}",
        ],
        "timing_scope": "BatchedRecognizer.transcribe_batch(all segments): features + forward",
    }


def run_worker(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    _set_threads(spec["threads"])
    model = ModelSpec(**spec["model"])
    row = spec["row"]
    if row == "1":
        out = (
            row_whisper_sequential(spec)
            if model.is_whisper
            else row_funasr_automodel(spec, with_vad=False)
        )
    elif row == "2":
        out = (
            row_whisper_batched(spec)
            if model.is_whisper
            else row_funasr_automodel(spec, with_vad=True)
        )
    elif row == "3":
        out = row_funasr_server(spec)
    elif row == "4":
        out = row_serve(spec)
    elif row == "5":
        out = row_ray_data(spec)
    elif row == "6":
        out = row_floor(spec)
    else:
        raise ValueError(row)
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


# -- the orchestrator -----------------------------------------------------------------------


@dataclass
class RowResult:
    model: str
    row: str
    status: str  # ok | n/a | failed
    rtfx: float | None = None
    wall_s: float | None = None
    audio_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    batch_size_counts: dict | None = None
    padding_efficiency: float | None = None
    peak_rss_mib: float | None = None
    peak_ray_workers_rss_mib: float | None = None
    peak_gpu_mib: float | None = None
    load_before: float | None = None
    load_max: float | None = None
    foreign_cores: float | None = None
    steady_rtfx: float | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    timing_scope: str = ""
    extra: dict = field(default_factory=dict)


def not_applicable(model: ModelSpec, row: str) -> str | None:
    if row == "3" and model.is_whisper:
        return (
            "funasr-server serves FunASR AutoModel models only (its --model-path goes to "
            "AutoModel); it cannot load a CTranslate2 Whisper model"
        )
    return None


def run_row(model: ModelSpec, row: str, args: argparse.Namespace, base: dict) -> RowResult:
    """Run one row; run it again (up to ``--retries``) when other processes took more than
    ``--max-foreign-cores`` of the CPU meanwhile, keeping the least disturbed attempt."""
    reason = not_applicable(model, row)
    if reason:
        return RowResult(model=model.name, row=row, status="n/a", reason=reason)
    attempts: list[RowResult] = []
    for attempt in range(args.retries + 1):
        result = _run_row_once(model, row, args, base)
        attempts.append(result)
        if result.status != "ok" or (result.foreign_cores or 0.0) <= args.max_foreign_cores:
            break
        if attempt < args.retries:
            print(
                f"  other processes used {result.foreign_cores} cores meanwhile "
                f"(> {args.max_foreign_cores}): running the row again",
                flush=True,
            )
    ok = [a for a in attempts if a.status == "ok"]
    best = min(ok, key=lambda a: a.foreign_cores or 0.0) if ok else attempts[-1]
    if len(attempts) > 1:
        best.notes.append(
            f"{len(attempts)} attempts (others' CPU use: "
            f"{[a.foreign_cores for a in attempts]} cores); kept the least disturbed"
        )
    return best


def _run_row_once(model: ModelSpec, row: str, args: argparse.Namespace, base: dict) -> RowResult:
    load_before, quiet = wait_for_quiet(args.max_load, args.load_wait_s)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{model.name}-row{row}-"))
    spec = {
        **base,
        "row": row,
        "model": asdict(model),
        "tmp": str(tmp),
        "out": str(tmp / "out.json"),
    }
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = tmp / "worker.log"
    print(f"[{model.name} row {row}] {ROW_TITLES[row]} (load {load_before:.2f}) ...", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_worker", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"},
        )
        sampler = TreeSampler(proc.pid, gpu=args.device == "cuda")
        try:
            with sampler:
                try:
                    rc = proc.wait(timeout=args.row_timeout_s)
                except subprocess.TimeoutExpired:
                    rc = None
        except BaseException:  # Ctrl-C / SIGTERM: take the row's processes down with us
            _reap(proc, sampler.pids)
            raise
        _reap(proc, sampler.pids)
    result = RowResult(
        model=model.name, row=row, status="failed", load_before=round(load_before, 2)
    )
    result.load_max = round(max(sampler.loads), 2) if sampler.loads else None
    result.foreign_cores = round(sampler.foreign_cores, 2)
    if not quiet:
        result.notes.append(f"load average stayed >= {args.max_load} (waited {args.load_wait_s} s)")
    out_path = Path(spec["out"])
    if rc != 0 or not out_path.exists():
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        result.reason = f"worker exit {rc}; log {log_path}:\n{tail}"
        print(result.reason, flush=True)
        return result
    out = json.loads(out_path.read_text())
    lat = out.pop("latencies_s", [])
    result.status = "ok"
    result.wall_s = round(out.pop("wall_s"), 2)
    result.audio_s = round(out.pop("audio_s"), 1)
    result.rtfx = round(result.audio_s / result.wall_s, 2) if result.wall_s else None
    result.latency_p50_s = _r(percentile(lat, 50))
    result.latency_p95_s = _r(percentile(lat, 95))
    result.latency_p99_s = _r(percentile(lat, 99))
    result.batch_size_counts = out.pop("batch_size_counts", None)
    result.padding_efficiency = out.pop("padding_efficiency", None)
    result.peak_rss_mib = round(sampler.peak_rss / 2**20)
    if row in ("4", "5"):
        result.peak_ray_workers_rss_mib = round(sampler.peak_ray_workers_rss / 2**20)
    result.peak_gpu_mib = out.pop("gpu_peak_mib", None) or sampler.peak_gpu_mib
    steady = out.pop("steady_wall_s", None)
    if steady:
        result.steady_rtfx = round(result.audio_s / steady, 2)
    result.notes += out.pop("notes", [])
    result.timing_scope = out.pop("timing_scope", "")
    result.extra = out
    if args.keep_logs:
        result.extra["log"] = str(log_path)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"  -> RTFx {result.rtfx}  wall {result.wall_s} s  peak {result.peak_rss_mib} MiB  "
        f"(load max {result.load_max}, others used {result.foreign_cores} cores)",
        flush=True,
    )
    if out.get("cpu_core_s"):
        print(f"     CPU core-s by role: {out['cpu_core_s']}", flush=True)
    return result


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reap(proc: subprocess.Popen, pids: dict[int, float]) -> None:
    """Kill what the row started and left behind: only pids seen in the row's own process
    tree, and only if the process is still the same one (same creation time)."""
    psutil = _psutil()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid, created in pids.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if pid != os.getpid() and p.create_time() == created:
                p.kill()


def batch_summary(counts: dict | None) -> str:
    if not counts:
        return "-"
    sizes = sorted((int(k), v) for k, v in counts.items())
    n = sum(v for _, v in sizes)
    mean = sum(k * v for k, v in sizes) / n
    return f"{n} x, mean {mean:.1f}, max {sizes[-1][0]}"


def ratios(results: Sequence[RowResult]) -> list[dict]:
    out = []
    by = {(r.model, r.row): r for r in results}
    for model in dict.fromkeys(r.model for r in results):
        for num, den, target in RATIOS:
            a, b = by.get((model, num)), by.get((model, den))
            value = None
            if a and b and a.rtfx and b.rtfx:
                value = round(a.rtfx / b.rtfx, 3)
            out.append(
                {
                    "model": model,
                    "ratio": f"{num}/{den}",
                    "value": value,
                    "target": target,
                    "met": None if value is None or target is None else value >= target,
                }
            )
    return out


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def render_markdown(results: Sequence[RowResult], ratio_rows: Sequence[dict]) -> str:
    """The same figures as a Markdown table (docs/BENCHMARKS.md is made from this)."""

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| model | row | RTFx | p50 s | p95 s | p99 s | batch sizes (forwards: size x count) "
        "| padding eff. | peak RSS MiB | load before / max |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        title = f"{r.row} {ROW_TITLES[r.row]}"
        if r.status != "ok":
            lines.append(f"| {r.model} | {title} | {r.status.upper()} | | | | {r.reason} | | | |")
            continue
        counts = r.batch_size_counts or {}
        dist = ", ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))
        rtfx = f(r.rtfx)
        if r.steady_rtfx:
            rtfx += f" (steady {r.steady_rtfx:.2f})"
        peak = f(r.peak_rss_mib, "{:.0f}")
        if r.peak_ray_workers_rss_mib:
            peak += f" (Ray workers {r.peak_ray_workers_rss_mib:.0f})"
        lines.append(
            f"| {r.model} | {title} | {rtfx} | {f(r.latency_p50_s)} | {f(r.latency_p95_s)} | "
            f"{f(r.latency_p99_s)} | {dist or '-'} | {f(r.padding_efficiency)} | {peak} | "
            f"{f(r.load_before)} / {f(r.load_max)} |"
        )
    lines += ["", "| model | ratio | value | target |", "|---|---|---:|---|"]
    for q in ratio_rows:
        target = "-" if q["target"] is None else f">= {q['target']}"
        if q["met"] is not None:
            target += " met" if q["met"] else " MISSED"
        lines.append(f"| {q['model']} | {q['ratio']} | {f(q['value'])} | {target} |")
    return "\n".join(lines)


def render(results: Sequence[RowResult], ratio_rows: Sequence[dict]) -> str:
    lines = []
    header = (
        f"{'model':<16} {'row':<38} {'RTFx':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'batches (passes, mean, max)':<28} {'pad.eff':>7} {'peak MiB':>9} {'load':>9}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in results:
        title = f"{r.row} {ROW_TITLES[r.row]}"
        if r.status != "ok":
            lines.append(
                f"{r.model:<16} {title:<38} {r.status.upper():>7}  {first_line(r.reason)[:110]}"
            )
            continue

        def f(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        load = f"{r.load_before:.2f}/{r.load_max:.1f}" if r.load_max is not None else "-"
        lines.append(
            f"{r.model:<16} {title:<38} {f(r.rtfx):>7} {f(r.latency_p50_s):>7} "
            f"{f(r.latency_p95_s):>7} {f(r.latency_p99_s):>7} "
            f"{batch_summary(r.batch_size_counts):<28} {f(r.padding_efficiency):>7} "
            f"{f(r.peak_rss_mib, '{:.0f}'):>9} {load:>9}"
        )
    lines.append("")
    lines.append("ratios (RTFx / RTFx):")
    for q in ratio_rows:
        if q["value"] is None:
            verdict = "n/a"
        elif q["target"] is None:
            verdict = "(no target)"
        else:
            verdict = f"target >= {q['target']}: {'MET' if q['met'] else 'MISSED'}"
        value = "-" if q["value"] is None else f"{q['value']:.2f}"
        lines.append(f"  {q['model']:<16} {q['ratio']:<5} {value:>6}  {verdict}")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    for pkg in ("ray", "funasr", "faster_whisper", "ctranslate2"):
        with contextlib.suppress(Exception):
            info[pkg] = __import__(pkg).__version__
    return info


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--corpus-minutes", type=float, default=30.0)
    p.add_argument("--corpus-dir", type=Path, default=bench_corpus.DEFAULT_ROOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="paraformer-large,whisper-tiny.en")
    p.add_argument(
        "--model-path",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="model folder for NAME (default: random FunASR models in /tmp/rm or "
        "generated; Whisper from the models dir)",
    )
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--concurrency", type=int, default=8, help="HTTP clients in rows 3 and 4")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        default=None,
        help="default: fp32 (FunASR) / int8 (Whisper) on CPU, fp16 on CUDA",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for the model in every row (default: all cores)",
    )
    p.add_argument(
        "--batch-config",
        default=None,
        help="Serve config that rows 2, 4, 5, 6 take their batch settings (and row 4 its "
        "deployments) from (default: ray_configs/tuned_<device>_<model>.yaml if present, "
        "else ray_configs/serve.yaml with built-in batch settings)",
    )
    p.add_argument(
        "--layout",
        choices=("config", "shipped"),
        default="config",
        help="config: that config's deployments, the model's replica/actor using all cores "
        "(OMP_NUM_THREADS); shipped: the resources of ray_configs/serve.yaml and "
        "batch_cpu.yaml untouched (the model gets 1 thread)",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=1.5,
        help="wait for the 1-min load average to drop below this before a row",
    )
    p.add_argument("--load-wait-s", type=float, default=900.0)
    p.add_argument(
        "--max-foreign-cores",
        type=float,
        default=0.3,
        help="run a row again when other processes used more CPU cores than this meanwhile",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--row-timeout-s", type=float, default=3600.0)
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        choices=sorted(EXPERIMENTS),
        help="A/B a proposed fix in rows 4 and 5 without editing shared code: "
        + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()),
    )
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--_worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker is not None:
        return run_worker(args._worker)
    import signal

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {ROWS}")
    overrides = dict(item.split("=", 1) for item in args.model_path)
    models = [
        resolve_model(name.strip(), overrides) for name in args.models.split(",") if name.strip()
    ]
    corpus = bench_corpus.build_corpus(args.corpus_minutes, root=args.corpus_dir, seed=args.seed)
    print(f"corpus: {corpus.describe()}", flush=True)

    vad_model = "fsmn-vad"
    vad_path = str(_models_dir() / vad_model)
    results: list[RowResult] = []
    configs: dict[str, dict] = {}
    started = time.time()
    for model in models:
        source = config_source(model, args.device, args.batch_config)
        batch = batch_settings(model, source)
        batch_source = str(source.relative_to(REPO) if source.is_relative_to(REPO) else source)
        if _source_recognizer(model, source)["name"] != model.name:
            batch_source = "built-in defaults (no tuned config for this model)"
        opts = {
            "device": args.device,
            "precision": args.precision,
            "threads": args.threads,
            "layout": args.layout,
            "batch": batch,
            "vad_model": vad_model,
            "config_path": str(source),
        }
        serve_config = serve_app_config(model, opts)
        job = job_config(model, opts)
        job["vad"] = dict(serve_config["vad"])  # one VAD setting for rows 4, 5 and 6
        configs[model.name] = {
            "batch": batch,
            "batch_source": batch_source,
            "serve_config": serve_config,
            "job_config": job,
            "job_env": job_env(opts),
        }
        base = {
            **opts,
            "corpus": {
                "minutes": args.corpus_minutes,
                "root": str(args.corpus_dir),
                "seed": args.seed,
            },
            "concurrency": args.concurrency,
            "vad_path": vad_path,
            "serve_config": serve_config,
            "job_config": job,
            "vad": serve_config["vad"],
            "job_env": job_env(opts),
            "experiments": args.experiment,
            "request_timeout_s": 3600.0,
            "startup_timeout_s": 600.0,
        }
        print(
            f"== {model.name} ({model.backend}, {model.path}); batch {batch} from {batch_source}",
            flush=True,
        )
        for row in rows:
            results.append(run_row(model, row, args, base))
    ratio_rows = ratios(results)
    table = render(results, ratio_rows)
    print()
    print(table)
    steady = [r for r in results if r.steady_rtfx]
    for r in steady:
        print(
            f"  {r.model} row {r.row}: steady-state RTFx {r.steady_rtfx} (first recognizer "
            "call -> end; the row's RTFx includes actor start and model load)"
        )
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items() if not k.startswith("_")},
        "corpus": {
            "dir": str(corpus.directory),
            "files": len(corpus.files),
            "audio_s": round(corpus.total_s, 1),
            "durations_s": [round(f.duration_s, 1) for f in corpus.files],
        },
        "configs": configs,
        "results": [asdict(r) for r in results],
        "ratios": ratio_rows,
    }
    out = args.json_out or DEFAULT_RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(render_markdown(results, ratio_rows) + "\n")
    print(f"\nresults: {out} (and {out.with_suffix('.md').name})")
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
