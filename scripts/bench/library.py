"""The rows in this process: the library's own paths (1, 2) and the floor (6).

Row 1, one file at a time: FunASR ``AutoModel.generate(file)`` without VAD (its default
``batch_size=1`` path) | faster-whisper ``WhisperModel.transcribe(file)`` (greedy, no VAD).
Row 2, the library's own batching: ``AutoModel`` + fsmn-vad + ``batch_size_s`` |
faster-whisper's ``BatchedInferencePipeline`` (Silero VAD).
Timed: the sum over files of one call each. Every forward pass is recorded (items, real and
padded audio) by wrapping the model's ``inference`` / Whisper's ``encode`` / the pipeline's
``forward``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.tools.models import ModelSpec

from .harness import (
    WHISPER_WINDOW_S,
    corpus_of,
    gpu_peak_mib,
    noise_wav,
    quiet_funasr,
    set_threads,
)
from .measure import BatchRecord, cpu_breakdown, cpu_by_process


def run(spec: dict, *, batched: bool) -> dict:
    if ModelSpec(**spec["model"]).is_whisper:
        return whisper_row(spec, batched=batched)
    return funasr_row(spec, with_vad=batched)


def _per_file(spec: dict, call: Callable[[str], object]) -> dict:
    """``call(path)`` over the corpus, timed per file."""
    corpus = corpus_of(spec)
    latencies = []
    started = time.perf_counter()
    for f in corpus.files:
        t0 = time.perf_counter()
        call(f.path)
        latencies.append(time.perf_counter() - t0)
    wall_s = time.perf_counter() - started
    return {"wall_s": wall_s, "audio_s": corpus.total_s, "latencies_s": latencies}


def whisper_row(spec: dict, *, batched: bool) -> dict:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from serve_app.recognizers.whisper_backend import resolve_compute_type

    model = WhisperModel(
        ModelSpec(**spec["model"]).path,
        device=spec["device"],
        compute_type=resolve_compute_type(spec["precision"], spec["device"]),
        cpu_threads=spec["threads"] if spec["device"] == "cpu" else 0,
    )
    record = BatchRecord()
    options: dict[str, Any] = {"beam_size": 1, "language": "en"}
    if batched:
        pipeline: Any = BatchedInferencePipeline(model)
        options["batch_size"] = int(spec["batch"]["max_batch_items"])
        inner = pipeline.forward

        def forward(features: Any, tokenizer: Any, chunks: Any, opts: Any) -> Any:
            real = sum(float(c["duration"]) for c in chunks)
            record.add(len(chunks), real, WHISPER_WINDOW_S * len(chunks))
            return inner(features, tokenizer, chunks, opts)

        note = f"BatchedInferencePipeline.transcribe(batch_size={options['batch_size']}, ...)"
        scope = "sum over files of transcribe(file) incl. decode + Silero VAD"
    else:
        pipeline, inner = model, model.encode

        def forward(features: Any, *args: Any, **kwargs: Any) -> Any:
            record.add(1, 0.0, WHISPER_WINDOW_S)  # one 30 s window per call
            return inner(features, *args, **kwargs)

        note = "WhisperModel.transcribe(beam_size=1, language='en'), no VAD, defaults else"
        scope = "sum over files of transcribe(file) incl. decode (model loaded)"

    def transcribe(path: str) -> None:
        segments, _ = pipeline.transcribe(path, **options)
        list(segments)  # the generator does the work

    transcribe(str(noise_wav(Path(spec["tmp"]))))  # warm-up
    if batched:
        pipeline.forward = forward
    else:
        model.encode = forward
    out = _per_file(spec, transcribe)
    if not batched:
        record.real_s = out["audio_s"]  # every second of every file is encoded
    return {**out, **record.summary(), "notes": [note], "timing_scope": scope}


def funasr_row(spec: dict, *, with_vad: bool) -> dict:
    from funasr import AutoModel

    device = spec["device"]
    kwargs: dict[str, Any] = {"model": ModelSpec(**spec["model"]).path, "ncpu": spec["threads"]}
    kwargs.update(disable_update=True, disable_pbar=True, disable_log=True)
    generate: dict[str, Any] = {}
    notes = []
    if device == "cuda":
        kwargs["device"] = "cuda"
        if spec["precision"] in ("fp16", "bf16"):
            kwargs[spec["precision"]] = True
    else:
        # AutoModel turns batch_size_s off when its device string is exactly "cpu"
        # (inference_with_vad: `if kwargs["device"] == "cpu": batch_size = 0`); "cpu:0" is
        # the same device and keeps FunASR's own batching on, which row 2 measures.
        kwargs["device"] = "cpu:0" if with_vad else "cpu"
    if with_vad:
        kwargs["vad_model"] = spec["vad_path"]
        # The same cut as this project's VAD step and funasr-server: segments <= 30 s.
        kwargs["vad_kwargs"] = {"max_single_segment_time": int(spec["vad"]["max_segment_s"] * 1000)}
        generate["batch_size_s"] = int(spec["batch"]["max_forward_audio_s"])
        if device != "cuda":
            notes.append('device "cpu:0" so that AutoModel keeps batch_size_s batching on CPU')
        notes.append(
            f"batch_size_s={generate['batch_size_s']} (= max_forward_audio_s), "
            "batch_size_threshold_s=60 (default)"
        )
    with quiet_funasr():
        auto = AutoModel(**kwargs)
        record = BatchRecord()
        auto.generate(input=str(noise_wav(Path(spec["tmp"]))), **generate)  # warm-up
        _record_funasr_batches(auto.model, record)
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        out = _per_file(spec, lambda path: auto.generate(input=path, **generate))
    return {
        **out,
        **record.summary(),
        "gpu_peak_mib": gpu_peak_mib(device),
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


def _segments(spec: dict) -> tuple[Any, Any, list]:
    """The floor's input: the corpus's VAD segments (the VAD settings and segment packing
    of rows 4 and 5) as ``SegmentJob`` s, and the row's ``RecognizerSettings``."""
    from serve_app.config import RecognizerSettings, VadSettings
    from serve_app.core.types import SegmentJob
    from serve_app.tools import corpus as bench_corpus
    from serve_app.tools.models import models_dir

    from .settings import recognizer_settings

    corpus = corpus_of(spec)
    vad = VadSettings.model_validate(spec["vad"])
    with quiet_funasr():
        spans = bench_corpus.vad_spans(
            corpus, vad_settings_json=vad.model_dump_json(), models_dir=models_dir()
        )
    rec = recognizer_settings(ModelSpec(**spec["model"]), spec)
    settings = RecognizerSettings.model_validate(rec)
    spans = bench_corpus.pack_spans(spans, settings.segment_pack_s, corpus)  # as served
    jobs = [SegmentJob(audio=samples) for _, samples in bench_corpus.load_segments(corpus, spans)]
    return corpus, settings, jobs


def floor_row(spec: dict) -> dict:
    """Row 6, the floor: the backend's forward alone on pre-decoded VAD segments, sorted
    and packed by ``BatchedRecognizer``. Timed: one ``transcribe_batch`` over all segments
    (features + forward). ``6o``/``6q``: the same on ONNX Runtime (fp32 / int8)."""
    from serve_app.recognizers.factory import batched, build_backend
    from serve_app.tools.models import models_dir

    model = ModelSpec(**spec["model"])
    corpus, settings, jobs = _segments(spec)
    with quiet_funasr():
        backend = build_backend(settings, models_dir())
        set_threads(spec["threads"])
        backend.warmup()  # type: ignore[attr-defined]
    runner = batched(backend, settings.batch)  # planned as served
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
    record = BatchRecord(Counter(stats.batch_sizes), stats.real_audio_s, stats.padded_audio_s)
    if model.is_whisper:
        record.padded_s = WHISPER_WINDOW_S * stats.num_items
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": [],
        **record.summary(),
        "speech_s": stats.real_audio_s,
        "segments": len(jobs),
        "gpu_peak_mib": gpu_peak_mib(spec["device"]),
        "cpu_core_s": cpu_core_s,
        "notes": [
            f"{len(jobs)} items ({stats.real_audio_s:.0f} s of audio)",
            f"CPU core-seconds in the timed window: {sum(cpu_core_s.values()):g}",
        ],
        "timing_scope": "BatchedRecognizer.transcribe_batch(all segments): features + forward",
    }


FUNASR_ONNX_BATCH = 8  # row 8's batch_size (funasr-onnx's default is 1)


def funasr_onnx_row(spec: dict, *, batched: bool) -> dict:
    """Rows 7 and 8: the peer a CPU user would pick, the ``funasr-onnx`` package's
    ``Paraformer`` or ``SenseVoiceSmall`` (language ``auto``, its default; no VAD of its
    own), on the floor's segments and the SAME exported graph files (this project's export,
    linked into a folder with the weights' config.yaml, am.mvn and tokens.json or the
    sentencepiece model, as funasr-onnx reads them). Row 7: ``batch_size=1``; row 8:
    ``batch_size=FUNASR_ONNX_BATCH`` in segment order (it pads, it does not sort). Timed:
    one call over all segments, pre-decoded as for the floor (its own fbank + CMVN + LFR,
    the graph, its decode)."""
    import gc

    import yaml
    from funasr_onnx import Paraformer, SenseVoiceSmall

    from serve_app.recognizers.factory import build_backend
    from serve_app.tools.models import models_dir
    from serve_app.tools.random_models import SENSEVOICE_BPE_FILE

    model = ModelSpec(**spec["model"])
    corpus, settings, jobs = _segments(spec)
    with quiet_funasr():
        export = build_backend(settings, models_dir()).export  # type: ignore[attr-defined]
    gc.collect()
    sensevoice = (
        "SenseVoice" in yaml.safe_load((Path(model.path) / "config.yaml").read_text())["model"]
    )
    folder = Path(spec["tmp"]) / "funasr-onnx-model"
    folder.mkdir(exist_ok=True)
    tokenizer = SENSEVOICE_BPE_FILE if sensevoice else "tokens.json"
    for name in ("config.yaml", "am.mvn", tokenizer):
        (folder / name).symlink_to(Path(model.path) / name)
    for path in (export.fp32_path, export.int8_path):
        if path is not None:
            (folder / path.name).symlink_to(path)
    batch = FUNASR_ONNX_BATCH if batched else 1
    peer_class = SenseVoiceSmall if sensevoice else Paraformer
    asr = peer_class(
        str(folder),
        batch_size=batch,
        quantize=spec["precision"] == "int8",
        intra_op_num_threads=spec["threads"],
    )
    # Its __call__ reads a list as file paths: hand it the decoded segments, as the floor.
    asr.load_data = lambda content, fs=None: list(content)
    waves = [np.ascontiguousarray(job.audio, dtype=np.float32) for job in jobs]
    asr(waves[:batch])  # warm-up
    record = BatchRecord()
    for i in range(0, len(waves), batch):
        lengths = [len(w) / 16000 for w in waves[i : i + batch]]
        record.add(len(lengths), sum(lengths), max(lengths) * len(lengths))
    cpu_before = cpu_by_process()
    started = time.perf_counter()
    texts = asr(waves)
    wall_s = time.perf_counter() - started
    cpu_core_s = cpu_breakdown(cpu_before, cpu_by_process())
    if len(texts) != len(waves):
        raise RuntimeError(f"funasr-onnx returned {len(texts)} results for {len(waves)}")
    return {
        "wall_s": wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": [],
        **record.summary(),
        "speech_s": record.real_s,
        "segments": len(jobs),
        "cpu_core_s": cpu_core_s,
        "notes": [
            f"funasr-onnx {peer_class.__name__}(batch_size={batch}, quantize="
            f"{spec['precision'] == 'int8'}, intra_op_num_threads={spec['threads']})",
            f"{len(jobs)} items ({record.real_s:.0f} s of audio), the floor's segments",
        ],
        "timing_scope": f"{peer_class.__name__}(all segments): features + forward + decode",
    }
