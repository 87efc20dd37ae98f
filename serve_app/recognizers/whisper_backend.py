"""Whisper (CTranslate2, via faster-whisper) as an :class:`AsrBackend`.

``forward`` runs a whole batch as ONE encoder call and ONE ``generate`` call, the way
faster-whisper's ``BatchedInferencePipeline.generate_segment_batched`` does: each segment's
log-Mel features are padded to Whisper's fixed 30 s window (3000 frames), so items of any
length <= 30 s share a batch. Decoding is greedy by default (``beam_size=1``), with
faster-whisper's default token suppression and Whisper's no-speech rule. With
``timestamps=True`` (used when several VAD segments are packed into one 30 s item) the
model also emits its timestamp tokens and each item's text comes back in timed spans, so
the response keeps sentence-level segments; without, one text per item. There is no
temperature fallback: it would make results depend on sampling and items would no longer
be reproducible one at a time.

Thread safety: the CTranslate2 model may be called from several threads at once (calls
are queued onto ``num_workers`` model replicas); this object keeps no per-call state, and
its only mutable field, a per-language tokenizer cache, is filled under a lock. One
instance can therefore serve concurrent ``forward`` calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import InvalidRequestError
from serve_app.core.modelref import OFFLINE_ENV_VARS, downloads_disabled, resolve_model_ref
from serve_app.core.types import (
    ModelCapabilities,
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
    TextSpan,
    WordTiming,
)

logger = logging.getLogger(__name__)

# Whisper's fixed input window: 30 s of 16 kHz audio -> 3000 Mel frames (hop 160).
WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE_HZ)
WINDOW_FRAMES = 3000
# One timestamp token step (the encoder's output frame rate after its stride-2 conv).
TIMESTAMP_STEP_S = 0.02

# Decoder budget per batch: ~12 tokens per second of the longest item plus a floor. Fast
# speech is ~4-5 tokens/s, so real text is never cut; a looping (hallucinating) item stops
# early instead of holding the whole batch to the model's 448-token limit.
MAX_NEW_TOKENS_PER_S = 12.0
MIN_NEW_TOKENS = 24

# Whisper's own no-speech rule (openai/whisper, faster-whisper): a segment is silence when
# the no-speech probability is high AND the decoded text is improbable.
NO_SPEECH_PROB_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# Peak amplitude below which a segment is digital silence (-80 dBFS, ~3 LSB of 16-bit PCM).
SILENCE_PEAK = 1e-4
# Above this zlib compression ratio the text is repetitive (a typical hallucination).
COMPRESSION_RATIO_THRESHOLD = 2.4
# Mel frames per second (hop 160 at 16 kHz): an item's real, unpadded frames for alignment.
MEL_FRAMES_PER_S = 100
# faster-whisper's transcribe() defaults: punctuation merged into the neighbouring word.
PREPEND_PUNCTUATIONS = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"

# Accepted precision aliases -> CTranslate2 compute types; CTranslate2 names pass through.
PRECISION_TO_COMPUTE_TYPE = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "int8": "int8",
}


def resolve_compute_type(precision: str | None, device: str) -> str:
    """Map ``fp32|fp16|bf16|int8`` (or a CTranslate2 compute type) to a compute type.

    ``None`` picks ``int8`` on CPU and ``float16`` on CUDA.
    """
    if precision is None:
        return "float16" if device == "cuda" else "int8"
    return PRECISION_TO_COMPUTE_TYPE.get(precision, precision)


def resolve_model_path(model_ref: str, models_dir: Path | None = None) -> str:
    """An existing directory, else ``models_dir/model_ref``, else a hub download.

    The hub path (``tiny.en``, ``Systran/faster-whisper-small``...) first looks in the
    Hugging Face cache, then downloads. Offline, huggingface_hub fails within its own
    connect timeouts; any failure becomes a ``FileNotFoundError`` naming every place tried.
    With ``ASR_OFFLINE`` (or ``FUNASR_OFFLINE``, ``HF_HUB_OFFLINE``) set, no download is
    tried at all.
    """
    resolved = resolve_model_ref(model_ref, models_dir)
    if Path(resolved).is_dir():
        return resolved

    from faster_whisper.utils import download_model

    try:
        return download_model(model_ref, local_files_only=True)
    except Exception:  # not cached: try the network below
        pass
    if downloads_disabled():
        where = f", nor under {models_dir}" if models_dir is not None else ""
        raise FileNotFoundError(
            f"whisper model {model_ref!r} is not a directory{where}, not in the Hugging "
            f"Face cache, and downloads are off ({'/'.join(OFFLINE_ENV_VARS)} is set); "
            "run serve_app/tools/provision_models.py or pass a model directory"
        )
    try:
        return download_model(model_ref)
    except Exception as exc:
        where = f", nor under {models_dir}" if models_dir is not None else ""
        raise FileNotFoundError(
            f"whisper model {model_ref!r} is not a directory{where}, not in the Hugging "
            f"Face cache, and could not be downloaded ({type(exc).__name__}: {exc}); "
            "run serve_app/tools/provision_models.py or pass a model directory"
        ) from exc


class WhisperBackend:
    """A CTranslate2 Whisper model behind the :class:`AsrBackend` protocol."""

    def __init__(
        self,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        device: str = "cpu",
        compute_type: str | None = None,
        beam_size: int = 1,
        cpu_threads: int = 0,
        num_workers: int = 1,
        device_index: int = 0,
        name: str | None = None,
        timestamps: bool = False,
        partial_window_s: float | None = None,
    ) -> None:
        """Load the model.

        Args:
            model_ref: a model directory, a folder name under ``models_dir``, or a
                faster-whisper hub name (``tiny.en``...; needs network unless cached).
            models_dir: where provisioned models live
                (``python -m serve_app.tools.provision_models``).
            device: ``cpu`` or ``cuda``.
            compute_type: ``fp32|fp16|bf16|int8`` or any CTranslate2 compute type
                (``int8_float16``...); default ``int8`` on CPU, ``float16`` on CUDA.
            beam_size: 1 is greedy (deterministic, fastest).
            cpu_threads: CTranslate2 intra-op threads on CPU (0: its default /
                ``OMP_NUM_THREADS``).
            num_workers: model replicas for concurrent ``forward`` calls from threads.
            device_index: CUDA device.
            name: the served name; default ``whisper-<model folder>``.
            timestamps: decode with timestamp tokens and return timed text spans.
            partial_window_s: live partials' forwards (background items only) encode a
                window this long (longer when an item needs it: :func:`partial_frames`)
                instead of 30 s; finals and files keep 30 s.
        """
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._tokenizer_cls = Tokenizer
        self.model_path = resolve_model_path(model_ref, models_dir)
        self.device = device
        self.compute_type = resolve_compute_type(compute_type, device)
        self.beam_size = beam_size
        self.timestamps = timestamps
        self.partial_window_s = partial_window_s
        self._model = WhisperModel(
            self.model_path,
            device=device,
            device_index=device_index,
            compute_type=self.compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        self.is_multilingual = bool(self._model.model.is_multilingual)
        self._tokenizers: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        # Same suppression as faster-whisper's transcribe() default (suppress_tokens=[-1]).
        self._suppress_tokens = list(get_suppressed_tokens(self._tokenizer("en"), [-1]))
        folder = Path(model_ref.rstrip("/")).name  # "whisper-tiny.en", "tiny.en", "org/x" -> "x"
        self._name = name or (folder if "whisper" in folder else f"whisper-{folder}")

    @property
    def name(self) -> str:
        return self._name

    def group_key(self, options: RecognitionOptions) -> object:
        """Items sharing a prompt (and hotwords) may share a forward pass.

        CTranslate2 needs ``<|startoftranscript|>`` at the same position in every prompt of
        a batch, so the text before it (initial prompt, hotwords) must be common; the
        language token after it can differ per item, so language is not part of the key.
        The task token and whether words are aligned (an extra pass) are per batch too.
        """
        return (
            _clean_prompt(options.prompt),
            tuple(options.hotwords),
            options.task,
            options.word_timestamps,
        )

    def capabilities(self) -> ModelCapabilities:
        """Whisper: punctuated text, word times (cross-attention alignment), prompt and
        hotwords; multilingual models also detect the language and translate."""
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return ModelCapabilities(
            languages=tuple(_LANGUAGE_CODES) if self.is_multilingual else ("en",),
            language_detection=self.is_multilingual,
            translation=self.is_multilingual,
            word_timestamps=True,
            hotwords="prompt",
            punctuation=True,
        )

    def validate_options(self, options: RecognitionOptions) -> None:
        """Reject options this model cannot honour (call before batching, for a 400)."""
        if options.task not in ("transcribe", "translate"):
            raise InvalidRequestError(
                f"task {options.task!r} is not one of 'transcribe', 'translate'", param="task"
            )
        if self.is_multilingual and options.language is not None:
            from faster_whisper.tokenizer import _LANGUAGE_CODES

            if options.language not in _LANGUAGE_CODES:
                raise InvalidRequestError(
                    f"language {options.language!r} is not one of {self.name}'s languages "
                    "(ISO-639-1 codes such as 'en', 'de', 'zh')",
                    param="language",
                )
        if options.task == "translate" and not self.is_multilingual:
            raise InvalidRequestError(
                f"task='translate' needs a multilingual Whisper model; {self.name} is English-only",
                param="task",
            )

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        """Transcribe ``jobs`` (equal ``group_key``) as one encode + one generate call.

        Digitally silent or empty segments get ``""`` without reaching the model; a segment
        longer than 30 s, or a batch mixing prompts, raises ``ValueError``.
        """
        if not jobs:
            return []
        for job in jobs:
            if len(job.audio) > WINDOW_SAMPLES:
                raise ValueError(
                    f"segment of {job.duration_s:.2f} s exceeds Whisper's {WINDOW_S:.0f} s "
                    "window; segment the audio first"
                )
        if any(self.group_key(job.options) != self.group_key(jobs[0].options) for job in jobs):
            raise ValueError(
                "a Whisper batch must share prompt, hotwords, task and word_timestamps "
                "(see group_key)"
            )

        # Digital silence never reaches the model: Whisper tends to "hear" a word ("you")
        # in a long silent window, and skipping it costs nothing.
        results = [
            SegmentTranscript(text="", language=self._silent_language(job.options)) for job in jobs
        ]
        audible = [i for i, job in enumerate(jobs) if _peak(job.audio) >= SILENCE_PEAK]
        frames = WINDOW_FRAMES
        if self.partial_window_s and all(getattr(job, "priority", 0) > 0 for job in jobs):
            frames = partial_frames(max(len(job.audio) for job in jobs), self.partial_window_s)
        if audible:
            decoded = self._decode_batch([jobs[i] for i in audible], frames)
            for i, transcript in zip(audible, decoded, strict=True):
                results[i] = transcript
        return results

    def _decode_batch(
        self, jobs: Sequence[SegmentJob], frames: int = WINDOW_FRAMES
    ) -> list[SegmentTranscript]:
        """The one encode + generate call over non-silent ``jobs``, padded to ``frames``."""
        prompt_text = _clean_prompt(jobs[0].options.prompt)
        hotwords = " ".join(jobs[0].options.hotwords) or None
        features = np.stack([self._features(job.audio, frames) for job in jobs])
        encoder_output = self._model.encode(features)
        languages, probabilities = self._languages(jobs, encoder_output)
        task = jobs[0].options.task
        self.validate_options(jobs[0].options)

        # One prompt per item, identical but for the language token.
        base_tokenizer = self._tokenizer(languages[0], task)
        previous = base_tokenizer.encode(" " + prompt_text) if prompt_text else []
        base_prompt = self._model.get_prompt(
            base_tokenizer, previous, without_timestamps=not self.timestamps, hotwords=hotwords
        )
        prompts = []
        for language in languages:
            prompt = list(base_prompt)
            if self.is_multilingual:
                index = prompt.index(base_tokenizer.language)
                prompt[index] = self._tokenizer(language, task).language
            prompts.append(prompt)

        longest_s = max(job.duration_s for job in jobs)
        budget = MIN_NEW_TOKENS + math.ceil(longest_s * MAX_NEW_TOKENS_PER_S)
        max_length = min(self._model.max_length, len(base_prompt) + budget)
        generated = self._model.model.generate(
            encoder_output,
            prompts,
            beam_size=self.beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
        )
        transcripts = [
            dataclasses.replace(
                self._transcript(result, language, base_tokenizer, job.duration_s),
                language_probability=probability,
            )
            for result, language, probability, job in zip(
                generated, languages, probabilities, jobs, strict=True
            )
        ]
        if not jobs[0].options.word_timestamps:
            return transcripts
        words = self._word_timings(
            jobs,
            [r.sequences_ids[0] for r in generated],
            transcripts,
            languages,
            task,
            encoder_output,
            features,
        )
        return [
            dataclasses.replace(transcript, words=item_words)
            for transcript, item_words in zip(transcripts, words, strict=True)
        ]

    def _word_timings(
        self,
        jobs: Sequence[SegmentJob],
        tokens: Sequence[Sequence[int]],
        transcripts: Sequence[SegmentTranscript],
        languages: Sequence[str],
        task: str,
        encoder_output,
        features: np.ndarray,
    ) -> list[tuple[WordTiming, ...]]:
        """Word times (item-relative seconds) as faster-whisper's ``add_word_timestamps``.

        One batched ``align`` call (cross-attention DTW) per language in the batch (the
        start sequence holds the language token; a mixed-language batch re-encodes each
        language's items), then faster-whisper's own per-segment post-processing, run item
        by item so no item's times depend on its batch-mates (faster-whisper carries the
        last speech time from one chunk to the next: here every item starts at 0).
        """
        out: list[tuple[WordTiming, ...]] = [() for _ in jobs]
        by_language: dict[str, list[int]] = {}
        for i, transcript in enumerate(transcripts):
            if transcript.text:  # blank (no-speech) items have no words
                by_language.setdefault(languages[i], []).append(i)
        for language, indices in by_language.items():
            tokenizer = self._tokenizer(language, task)
            if len(indices) == len(jobs):
                encoded = encoder_output
            else:
                encoded = self._model.encode(np.ascontiguousarray(features[indices]))
            num_frames = [_num_frames(jobs[i]) for i in indices]
            segments = [
                self._alignment_segments(tokens[i], tokenizer, n, jobs[i].duration_s)
                for i, n in zip(indices, num_frames, strict=True)
            ]
            text_tokens = [
                [t for sub in segment for t in sub["tokens"] if t < tokenizer.eot]
                for segment in segments
            ]
            alignments = self._model.find_alignment(tokenizer, text_tokens, encoded, num_frames)
            for i, segment, alignment, n in zip(
                indices, segments, alignments, num_frames, strict=True
            ):
                out[i] = self._post_process_words(segment, alignment, tokenizer, n)
        return out

    def _alignment_segments(
        self, tokens: Sequence[int], tokenizer, num_frames: int, duration_s: float
    ) -> list[dict]:
        """faster-whisper's subsegment dicts for one item (its timestamp spans, or one)."""
        if self.timestamps:
            subsegments, _, _ = self._model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=list(tokens),
                time_offset=0.0,
                segment_size=num_frames,
                segment_duration=duration_s,
                seek=0,
            )
            if subsegments:
                return [dict(sub) for sub in subsegments]
        text = [t for t in tokens if t < tokenizer.eot]
        return [{"seek": 0, "start": 0.0, "end": duration_s, "tokens": text}]

    def _post_process_words(
        self, segment: list[dict], alignment: list[dict], tokenizer, num_frames: int
    ) -> tuple[WordTiming, ...]:
        from faster_whisper import WhisperModel

        # add_word_timestamps aligns by calling self.find_alignment: give it this item's
        # alignment from the batched call, so its post-processing runs unchanged.
        shim = _PrecomputedAlignment(alignment, self._model.frames_per_second)
        WhisperModel.add_word_timestamps(
            shim,  # type: ignore[arg-type]
            [segment],
            tokenizer,
            None,
            num_frames,
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
            0.0,
        )
        return tuple(
            WordTiming(start_s=float(w["start"]), end_s=float(w["end"]), word=w["word"].strip())
            for sub in segment
            for w in sub.get("words", ())
            if w["word"].strip()
        )

    def warmup(self, batch_size: int = 2) -> None:
        """Run one short batch so the first request does not pay for lazy initialisation."""
        t = np.arange(SAMPLE_RATE_HZ, dtype=np.float32) / SAMPLE_RATE_HZ
        tone = (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        self.forward([SegmentJob(audio=tone) for _ in range(max(1, batch_size))])

    # -- internals ----------------------------------------------------------------------

    def _silent_language(self, options: RecognitionOptions) -> str | None:
        return options.language if self.is_multilingual else "en"

    def _tokenizer(self, language: str, task: str = "transcribe"):
        with self._lock:
            tokenizer = self._tokenizers.get((language, task))
            if tokenizer is None:
                tokenizer = self._tokenizer_cls(
                    self._model.hf_tokenizer,
                    self.is_multilingual,
                    task=task,
                    language=language,
                )
                self._tokenizers[(language, task)] = tokenizer
            return tokenizer

    def _features(self, audio: np.ndarray, frames: int = WINDOW_FRAMES) -> np.ndarray:
        """Log-Mel of one segment padded to 3000 frames, as BatchedInferencePipeline does
        (fewer for live partials: :func:`partial_frames`).

        (The extractor appends one frame for its 160-sample end padding; it is dropped, and
        the rest is zero-padded in log-Mel space, exactly like faster-whisper's own paths.)
        """
        from faster_whisper.audio import pad_or_trim

        samples = np.ascontiguousarray(audio, dtype=np.float32)
        mel = self._model.feature_extractor(samples)[..., :-1]
        return pad_or_trim(mel, frames)

    def _languages(
        self, jobs: Sequence[SegmentJob], encoder_output
    ) -> tuple[list[str], list[float | None]]:
        """Per-item language (``en`` for English-only models, else requested or detected)
        and, where detected, its probability."""
        if not self.is_multilingual:
            for job in jobs:
                if job.options.language not in (None, "en"):
                    logger.debug("English-only model: ignoring language=%s", job.options.language)
            return ["en"] * len(jobs), [None] * len(jobs)
        requested = [job.options.language for job in jobs]
        if all(requested):
            return [str(language) for language in requested], [None] * len(jobs)
        # Each entry is [("<|xx|>", prob), ...], most probable first.
        detected = self._model.model.detect_language(encoder_output)
        languages: list[str] = []
        probabilities: list[float | None] = []
        for language, ranked in zip(requested, detected, strict=True):
            languages.append(language or ranked[0][0][2:-2])
            probabilities.append(None if language else float(ranked[0][1]))
        return languages, probabilities

    def _transcript(self, result, language: str, tokenizer, duration_s: float) -> SegmentTranscript:
        tokens = result.sequences_ids[0]
        # CTranslate2 returns the cumulative log-prob normalised by length (penalty 1).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
            return SegmentTranscript(text="", language=language)
        spans: tuple[TextSpan, ...] = ()
        if self.timestamps:
            spans = split_by_timestamps(tokens, tokenizer, duration_s)
            text = " ".join(span.text for span in spans)
        else:
            text = tokenizer.decode(tokens).strip()
        ratio = _compression_ratio(text) if text else None
        if ratio is not None and ratio > COMPRESSION_RATIO_THRESHOLD:
            logger.warning("repetitive Whisper output (likely hallucination): %.80r", text)
        return SegmentTranscript(text=text, language=language, spans=spans, compression_ratio=ratio)


def split_by_timestamps(
    tokens: Sequence[int], tokenizer, duration_s: float
) -> tuple[TextSpan, ...]:
    """Whisper's ``<|t|> text <|t|>`` token stream -> timed spans (item-relative seconds).

    Text before the first timestamp starts at 0; text after the last one ends at the item's
    end; times are clamped to ``[0, duration_s]``; spans without text are dropped.
    """
    begin = tokenizer.timestamp_begin
    spans: list[TextSpan] = []
    start_s: float | None = None
    last_end_s = 0.0
    text_tokens: list[int] = []

    def close(end_s: float) -> None:
        text = tokenizer.decode(text_tokens).strip()
        lo = min(max(start_s if start_s is not None else last_end_s, 0.0), duration_s)
        if text:
            spans.append(TextSpan(lo, min(max(end_s, lo), duration_s), text))

    for token in tokens:
        if token < begin:
            text_tokens.append(token)
            continue
        time_s = (token - begin) * TIMESTAMP_STEP_S
        if text_tokens:
            close(time_s)
            text_tokens = []
            start_s, last_end_s = None, time_s
        else:
            start_s = time_s
    if text_tokens:
        close(duration_s)
    return tuple(spans)


class _PrecomputedAlignment:
    """Stands in for ``WhisperModel`` as the ``self`` of its ``add_word_timestamps``."""

    def __init__(self, alignment: list[dict], frames_per_second: float) -> None:
        self._alignment = alignment
        self.frames_per_second = frames_per_second

    def find_alignment(self, *args, **kwargs) -> list[list[dict]]:
        return [self._alignment]


def partial_frames(samples: int, window_s: float) -> int:
    """Mel frames a partials-only forward encodes: ``window_s``, or the longest item plus
    1 s of padding rounded up to 5 s, at most Whisper's 30 s. The encoder's cost follows
    its input (CTranslate2 takes fewer than 3000 frames, using the first positions): 12
    espeak-ng sentences as partials every 0.8 s, 48 forwards, 2 threads: 16.3 s at 30 s,
    4.6 s at 10 s; the full sentences' WER 0.159 at 30 s, 0.103 at 10 s. Shorter windows are
    Whisper outside its training (5 s made it loop), so finals and files keep 30 s."""
    step = 5 * MEL_FRAMES_PER_S
    needed = -(-(samples * MEL_FRAMES_PER_S // SAMPLE_RATE_HZ + MEL_FRAMES_PER_S) // step) * step
    return int(min(WINDOW_FRAMES, max(window_s * MEL_FRAMES_PER_S, needed)))


def _num_frames(job: SegmentJob) -> int:
    """An item's real (unpadded) Mel frames, as faster-whisper's ``segment_size``."""
    return max(1, min(WINDOW_FRAMES, len(job.audio) * MEL_FRAMES_PER_S // SAMPLE_RATE_HZ))


def _peak(audio: np.ndarray) -> float:
    return float(np.max(np.abs(audio))) if len(audio) else 0.0


def _clean_prompt(prompt: str | None) -> str | None:
    prompt = (prompt or "").strip()
    return prompt or None


def _compression_ratio(text: str) -> float:
    import zlib

    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))
