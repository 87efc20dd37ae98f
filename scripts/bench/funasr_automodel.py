"""Rows 1 and 2 for FunASR models: ``AutoModel.generate(file)``, one file per call.

Row 1 runs it without VAD (FunASR's default ``batch_size=1`` path), row 2 with fsmn-vad
and ``batch_size_s`` (FunASR's own batching). Every forward pass is recorded (items and
real / padded audio) by wrapping the model's ``inference``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serve_app.tools.models import ModelSpec

from .harness import _corpus, _gpu_peak_mib, _noise_wav, _quiet_funasr
from .measure import BatchRecord


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
