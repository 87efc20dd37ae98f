"""FunASR backend: one loader for local folders and hub ids, one padded forward per batch.

FunASR's ``AutoModel.generate`` forces ``batch_size = 1`` on CPU and shares one mutable
kwargs dict between calls, so :class:`FunAsrBackend` calls the model's own
``inference(data_in=[...], ...)`` with every segment of a batch at once and builds a fresh
kwargs dict per call. Supported model classes: ``Paraformer`` / ``BiCifParaformer``
(plain), ``SeacoParaformer`` (hotwords) and ``SenseVoiceSmall`` (language, ITN, rich tags).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.core.errors import InvalidRequestError
from serve_app.core.text import join_tokens
from serve_app.core.types import (
    ModelCapabilities,
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
    WordTiming,
)
from serve_app.recognizers.funasr_loader import load_funasr_model

logger = logging.getLogger(__name__)

PARAFORMER_CLASSES = frozenset({"Paraformer", "BiCifParaformer"})
SEACO_CLASSES = frozenset({"SeacoParaformer"})
SENSEVOICE_CLASSES = frozenset({"SenseVoiceSmall"})
# Languages SenseVoiceSmall can be told to transcribe (its ``lid_dict``), "auto" detects.
SENSEVOICE_LANGUAGES = frozenset({"auto", "zh", "en", "yue", "ja", "ko"})
_DETECTABLE_LANGUAGES = SENSEVOICE_LANGUAGES - {"auto"}
_RICH_TAG = re.compile(r"<\|([^|]*)\|>")
_LEADING_TAGS = re.compile(r"^\s*(?:<\|[^|]*\|>)+")
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- loading


# ---------------------------------------------------------------- backend


def _zero_padded_frames(encode: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``Paraformer.encode`` so encoder frames past each item's length are zero.

    The CIF predictor's conv looks one frame past the end; alone, an item sees zero padding
    there, in a batch it sees the encoder's output on padding. Zeroing those frames makes a
    batched item's tokens identical to the item run alone.
    """

    @functools.wraps(encode)
    def wrapped(speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs: Any) -> Any:
        encoder_out, encoder_out_lens, *rest = encode(speech, speech_lengths, **kwargs)
        if isinstance(encoder_out, tuple):
            encoder_out = encoder_out[0]
        frames = torch.arange(encoder_out.size(1), device=encoder_out.device)
        valid = frames[None, :] < encoder_out_lens.to(encoder_out.device)[:, None]
        return (encoder_out * valid.unsqueeze(-1).to(encoder_out.dtype), encoder_out_lens, *rest)

    return wrapped


def _timestamps_per_item(calc: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``calc_predictor_timestamp`` (BiCif, SeACo) to run item by item.

    Its upsampling BLSTM runs over the padded batch without packing, so the backward pass
    over an item's padding shifts that item's timestamps. The head is small next to the
    encoder; running it per item keeps a batched item's timestamps equal to its own.
    """

    @functools.wraps(calc)
    def wrapped(encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, token_num: Any) -> Any:
        if encoder_out.size(0) == 1:
            return calc(encoder_out, encoder_out_lens, token_num)
        parts = [
            calc(
                encoder_out[i : i + 1, : int(n)], encoder_out_lens[i : i + 1], token_num[i : i + 1]
            )
            for i, n in enumerate(encoder_out_lens.tolist())
        ]
        return tuple(
            torch.nn.utils.rnn.pad_sequence([part[k][0] for part in parts], batch_first=True)
            for k in range(len(parts[0]))
        )

    return wrapped


def _normalize_language(language: str | None) -> str:
    if not language:
        return "auto"
    return language.strip().lower().replace("_", "-").split("-")[0]


def _hotwords(options: RecognitionOptions) -> tuple[str, ...]:
    return tuple(word.strip() for word in options.hotwords if word.strip())


def _unsafe_hotword(hotword: str) -> bool:
    # SeACo's hotword parser reads a ".txt" path from disk and downloads "http..." URLs.
    word = hotword.strip().lower()
    return word.startswith("http") or word.endswith(".txt")


class FunAsrBackend:
    """Batched FunASR recognizer implementing ``AsrBackend``.

    Construct with a folder, a name under ``models_dir`` or a hub id (see
    :func:`load_funasr_model`). ``forward`` runs all its jobs as one padded batch through
    the model's ``inference``; ``BatchedRecognizer`` groups jobs by :meth:`group_key` first.

    - Paraformer: options are ignored. SeACo-Paraformer: ``options.hotwords`` (FunASR
      splits every hotword on whitespace, so "New York" biases "New" and "York").
      SenseVoice: ``options.language`` (``auto`` when unset; see
      :data:`SENSEVOICE_LANGUAGES`), rich tags stripped from the text, the detected
      language reported; ``use_itn`` applies inverse text normalisation.
    - ``word_timestamps`` (default: on for the Paraformer family, where they come free from
      the CIF peaks; off for SenseVoice, where they need a CTC forced alignment per item).
    - ``precision`` ``fp16``/``bf16`` runs under autocast on CUDA; on CPU it falls back to
      fp32 with a warning.

    Thread safety: one instance must never run two model forwards at once (FunASR models
    keep per-call state; SeACo stores the hotword list on the module). The Serve wrapper
    serializes calls; ``forward`` also holds a lock, so concurrent callers queue instead of
    corrupting each other.
    """

    def __init__(
        self,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        name: str | None = None,
        use_itn: bool = True,
        word_timestamps: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
        if precision != "fp32" and not device.startswith("cuda"):
            logger.warning(
                "precision %s needs CUDA; running %s on %s in fp32", precision, model_ref, device
            )
            precision = "fp32"
        self._loaded = load_funasr_model(
            model_ref, models_dir=models_dir, device=device, num_threads=num_threads
        )
        model_class = self._loaded.model_class
        if model_class in SENSEVOICE_CLASSES:
            self.family = "sensevoice"
        elif model_class in SEACO_CLASSES:
            self.family = "seaco"
        elif model_class in PARAFORMER_CLASSES:
            self.family = "paraformer"
        else:
            raise ValueError(f"FunASR model class {model_class!r} is not supported")
        if self.family != "sensevoice":
            # Instance attributes shadow the methods: only this backend's module is patched.
            module: Any = self._loaded.module
            module.encode = _zero_padded_frames(module.encode)
            if hasattr(module, "calc_predictor_timestamp"):
                module.calc_predictor_timestamp = _timestamps_per_item(
                    module.calc_predictor_timestamp
                )
        self._name = name or Path(model_ref).name or model_ref
        self._lock = threading.Lock()
        self.device = device
        self.precision = precision
        self.use_itn = use_itn
        self.word_timestamps = (
            self.family != "sensevoice" if word_timestamps is None else word_timestamps
        )
        # A forward's fixed cost in audio seconds, for the batch plan (plan_batches). On
        # a CPU a forward costs about its padded audio: Serve's batches filled greedily
        # padded arrival-order segments to 0.81 and ran ~25 % slower than planned with
        # 1.0 (docs/BENCHMARKS.md, "Batch plan"; 0.5-4 s measured alike). On CUDA (not
        # measured here): fewest forwards.
        self.forward_overhead_s: float | None = 1.0 if device == "cpu" else None

    @property
    def name(self) -> str:
        return self._name

    @property
    def model_class(self) -> str:
        return self._loaded.model_class

    @property
    def module(self) -> torch.nn.Module:
        return self._loaded.module

    def group_key(self, options: RecognitionOptions) -> object:
        """SenseVoice: the language; SeACo: the hotwords; Paraformer: nothing."""
        if self.family == "sensevoice":
            return _normalize_language(options.language)
        if self.family == "seaco":
            return _hotwords(options)
        return None

    def capabilities(self) -> ModelCapabilities:
        """Paraformer/SeACo: word (character) times from the CIF predictor, no punctuation
        of their own (a CT-Transformer stage adds it), no language id; SeACo: hotwords.
        SenseVoice: its own language id over its five languages, punctuated text with ITN,
        segment times only (from the VAD: the model gives no word times without a CTC
        forced alignment, which is not built). Languages are not declared for the
        Paraformer family: which one (Mandarin, English...) depends on the weights."""
        if self.family == "sensevoice":
            return ModelCapabilities(
                languages=tuple(sorted(_DETECTABLE_LANGUAGES)),
                language_detection=True,
                word_timestamps=self.word_timestamps,
                punctuation=self.use_itn,
            )
        return ModelCapabilities(
            word_timestamps=self.word_timestamps,
            hotwords="hotwords" if self.family == "seaco" else None,
        )

    def validate_options(self, options: RecognitionOptions) -> None:
        """Reject options this model cannot honour (call before batching, for a 400)."""
        if options.task != "transcribe":
            raise InvalidRequestError(
                f"task={options.task!r} is not supported by {self.name}: FunASR models "
                "transcribe only (translation needs a multilingual Whisper model)",
                param="task",
            )
        if options.word_timestamps and not self.word_timestamps:
            raise InvalidRequestError(
                f"word timestamps are not available from {self.name} ({self.model_class} "
                "gives segment times only)",
                param="timestamp_granularities",
            )
        if options.prompt:
            raise InvalidRequestError(
                f"prompt is not supported by {self.name} (a Whisper option; SeACo-Paraformer "
                "takes hotwords)",
                param="prompt",
            )
        if options.hotwords and self.family != "seaco":
            raise InvalidRequestError(
                f"hotwords are not supported by {self.name} ({self.model_class}); "
                "SeACo-Paraformer and Whisper models take them",
                param="hotwords",
            )
        if self.family == "sensevoice":
            language = _normalize_language(options.language)
            if language not in SENSEVOICE_LANGUAGES:
                raise InvalidRequestError(
                    f"language {options.language!r} is not supported by {self.name}; "
                    f"use one of {sorted(SENSEVOICE_LANGUAGES)}",
                    param="language",
                )
        if self.family == "seaco":
            bad = [word for word in options.hotwords if _unsafe_hotword(word)]
            if bad:
                raise InvalidRequestError(
                    f"hotwords may not be URLs or .txt paths: {bad}", param="hotwords"
                )

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        """Transcribe ``jobs`` (equal :meth:`group_key`) as one padded batch."""
        if not jobs:
            return []
        keys = {self.group_key(job.options) for job in jobs}
        if len(keys) > 1:
            raise ValueError(f"one forward needs equal group keys, got {keys}")
        options = jobs[0].options
        self.validate_options(options)
        # FunASR's frontend cannot frame zero samples; an empty segment says nothing.
        running = [i for i, job in enumerate(jobs) if len(job.audio) > 0]
        out = [SegmentTranscript(text="") for _ in jobs]
        if running:
            with self._lock:
                results = self._infer([jobs[i].audio for i in running], options)
            for i, result in zip(running, results, strict=True):
                out[i] = self._transcript(result, options)
        return out

    def warmup(self) -> float:
        """Run two 1 s segments of low noise so the first request does not pay; return s."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        noise = [rng.normal(0.0, 0.01, 16_000).astype(np.float32) for _ in range(2)]
        self.forward([SegmentJob(audio=samples) for samples in noise])
        elapsed_s = time.perf_counter() - started
        logger.info("warmed up %s in %.2f s", self.name, elapsed_s)
        return elapsed_s

    # ------------------------------------------------------------ internals

    def _call_kwargs(self, options: RecognitionOptions) -> dict[str, Any]:
        kwargs = dict(self._loaded.kwargs)  # fresh per call: FunASR reads, never shares
        kwargs["output_timestamp"] = self.word_timestamps
        if self.family == "seaco":
            hotwords = _hotwords(options)
            kwargs["hotword"] = " ".join(hotwords) if hotwords else None
        if self.family == "sensevoice":
            kwargs["language"] = _normalize_language(options.language)
            kwargs["use_itn"] = self.use_itn
        return kwargs

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(device_type="cuda", dtype=_PRECISIONS[self.precision]):
            yield

    def _infer(self, audio: Sequence[np.ndarray], options: RecognitionOptions) -> list[dict]:
        data_in = [np.ascontiguousarray(samples, dtype=np.float32) for samples in audio]
        keys = [f"seg{i}" for i in range(len(data_in))]
        kwargs = self._call_kwargs(options)
        with torch.inference_mode(), self._precision():
            module: Any = self._loaded.module
            raw = module.inference(data_in=data_in, key=keys, **kwargs)
        # (results, meta) normally; Paraformer returns a bare [] and SeACo ([],) when the
        # predictor fires no token for any item of the batch.
        results = raw[0] if isinstance(raw, tuple) else raw
        if not results:
            return [{"key": key, "text": ""} for key in keys]
        by_key = {result["key"]: result for result in results}
        if len(results) != len(keys) or set(by_key) != set(keys):
            raise RuntimeError(f"FunASR returned {len(results)} results for {len(keys)} items")
        return [by_key[key] for key in keys]

    def _transcript(self, result: dict, options: RecognitionOptions) -> SegmentTranscript:
        text = str(result.get("text", ""))
        timestamps_ms = result.get("timestamp") or []
        if self.family == "sensevoice":
            # The real model starts with <|lang|><|emotion|><|event|><|itn|>; tags elsewhere
            # in the text are not the utterance's language.
            leading = _LEADING_TAGS.match(text)
            tags = _RICH_TAG.findall(leading.group(0)) if leading else []
            detected = next((tag for tag in tags if tag in _DETECTABLE_LANGUAGES), None)
            requested = _normalize_language(options.language)
            language = detected or (None if requested == "auto" else requested)
            words = [str(w) for w in result.get("words", [])]
            return SegmentTranscript(
                text=_RICH_TAG.sub("", text).strip(),
                words=self._timings(words, timestamps_ms),
                language=language,
            )
        if not timestamps_ms:
            return SegmentTranscript(text=text.strip())
        # With timestamps FunASR joins every unit with a space ("皮 酒 病"): one per stamp.
        words = text.split()
        return SegmentTranscript(text=join_tokens(words), words=self._timings(words, timestamps_ms))

    @staticmethod
    def _timings(words: Sequence[str], timestamps_ms: Sequence[Any]) -> tuple[WordTiming, ...]:
        if not words or len(words) != len(timestamps_ms):
            if words and timestamps_ms:
                logger.debug("%d words but %d timestamps", len(words), len(timestamps_ms))
            return ()
        return tuple(
            WordTiming(start_s=float(span[0]) / 1000.0, end_s=float(span[1]) / 1000.0, word=word)
            for word, span in zip(words, timestamps_ms, strict=True)
        )
