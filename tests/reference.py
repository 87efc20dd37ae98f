"""Model-output bounds relative to the reference library, on the same machine and audio.

Fixed WER numbers measured on one CPU do not hold on another: int8 (and, less often, fp32)
GEMM kernels differ between CPU generations (AVX2 vs AVX-512 VNNI), and greedy decoding
turns a tiny logit difference into a different word. So a test never asks "WER < 0.25";
it asks "no worse than faster-whisper's own sequential ``transcribe`` of the same audio,
with the same weights and compute type, on this machine, plus a margin".

Margin: our path differs from faster-whisper's sequential transcribe by VAD cutting (300 ms
of context kept), segment packing and the batch an item rides in; measured here that costs
0-3 words per ~140 (about 0.02). ``WER_MARGIN`` (0.05) allows that with room for another
CPU's kernels; ``MIN_SLACK_WORDS`` (2) keeps one or two flipped words of a one-sentence
reference from failing a test. What the bound is there to catch costs far more: a dropped
sentence is 8-12 words, cross-talk or padding in the text a whole transcript.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serve_app.core.evaluation import normalize_words, word_error_rate

WER_MARGIN = 0.05
MIN_SLACK_WORDS = 2


class FasterWhisperReference:
    """faster-whisper's own sequential transcription (greedy, its defaults), memoised."""

    def __init__(self, model_dir: Path, compute_type: str = "int8") -> None:
        from faster_whisper import WhisperModel

        from serve_app.core.modelref import model_cpu_threads

        # The same thread count as the models under test ($ASR_CPU_THREADS, else default).
        self._model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=model_cpu_threads(0),
        )
        self._cache: dict[str, str] = {}

    def transcribe(self, samples: np.ndarray, language: str | None = "en") -> str:
        audio = np.ascontiguousarray(samples, dtype=np.float32)
        key = hashlib.sha1(audio.tobytes() + str(language).encode()).hexdigest()
        if key not in self._cache:
            segments, _ = self._model.transcribe(audio, language=language, beam_size=1)
            self._cache[key] = " ".join(s.text.strip() for s in segments)
        return self._cache[key]

    def transcribe_all(self, samples: Sequence[np.ndarray]) -> list[str]:
        return [self.transcribe(x) for x in samples]


def allowed_wer(references: Sequence[str], reference_hyps: Sequence[str]) -> float:
    """The reference library's WER on these references plus the margin (see module doc)."""
    words = sum(len(normalize_words(r)) for r in references)
    slack = max(WER_MARGIN, MIN_SLACK_WORDS / max(words, 1))
    return word_error_rate(references, reference_hyps) + slack


def assert_wer_near_reference(
    references: Sequence[str], hyps: Sequence[str], reference_hyps: Sequence[str]
) -> None:
    """Fail when our WER is worse than the reference library's by more than the margin."""
    ours = word_error_rate(references, hyps)
    bound = allowed_wer(references, reference_hyps)
    assert ours <= bound, (
        f"WER {ours:.3f} > {bound:.3f} (faster-whisper sequential "
        f"{word_error_rate(references, reference_hyps):.3f} + margin); ours={list(hyps)!r} "
        f"reference={list(reference_hyps)!r}"
    )


def text_distance(a: str, b: str) -> float:
    """Word edit distance between two transcripts of the same audio, per word of ``a``."""
    return word_error_rate([a], [b]) if normalize_words(a) else float(bool(normalize_words(b)))


def funasr_vad_spans(models_dir):
    """FunASR's own FSMN-VAD (``AutoModel.generate``) on the folder, one thread, as a
    function ``(samples, VadSettings) -> [(start_ms, end_ms)]``; the test process's torch
    thread count is left as it was."""
    import torch
    from funasr import AutoModel

    before = torch.get_num_threads()
    model = AutoModel(
        model=str(models_dir / "fsmn-vad"),
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
        ncpu=1,
    )
    torch.set_num_threads(before)

    def spans(samples, settings) -> list[tuple[int, int]]:
        result = model.generate(
            input=samples,
            max_end_silence_time=settings.end_silence_ms,
            speech_noise_thres=settings.fsmn_speech_noise_thres,
            disable_pbar=True,
        )
        return [(int(s), int(e)) for s, e in result[0]["value"]]

    return spans
