"""Whisper word timestamps (faster-whisper's cross-attention alignment) on real tiny.en.

The audio is made word by word: each word is spoken alone by espeak-ng, trimmed to where
its samples rise above the noise floor, and the words are joined with known gaps, so the
true onset of every word is known to a sample. Our batched backend (plain items and packed
timestamped items) must put each recognised word's start within 0.3 s of that onset, and
be about as close as faster-whisper's own ``transcribe(word_timestamps=True)``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import numpy as np
import pytest

from serve_app.core.types import RecognitionOptions, SegmentJob, WordTiming
from serve_app.recognizers.whisper_backend import WhisperBackend
from tests.speech import have_espeak, silence, synthesize

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")

ONSET_TOLERANCE_S = 0.3
# Ours may be this much worse on average than faster-whisper's own word times.
MEAN_ERROR_SLACK_S = 0.05
CPU_THREADS = int(os.environ.get("ASR_CPU_THREADS") or min(4, os.cpu_count() or 1))
SENTENCES = [
    "please call the customer service team tomorrow morning",
    "our meeting has been moved to thursday afternoon",
    "she ordered a large coffee and a blueberry muffin",
]
# Items start near speech, as VAD segments do (the VAD pads each segment by ~0.1-0.2 s).
# After a LONGER leading silence faster-whisper's alignment itself (and so ours, which
# matches it word for word) starts the first word at 0.0: measured 0.6 s early after 0.6 s
# of silence, on this audio, with transcribe(word_timestamps=True).
LEAD_S = 0.2
# Pauses between words, cycled: those of connected speech. Whisper's alignment gives each
# word the time since the previous word's end, so a word's start is early by about the
# pause before it: after a 0.5 s pause, measured 0.50 s early (faster-whisper's own
# transcribe gives the same times).
GAPS_S = (0.1, 0.2, 0.15, 0.25)
ONSET_THRESHOLD = 0.01  # |sample| above which a word has begun (espeak's floor is ~0)


def _trim(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > ONSET_THRESHOLD)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def _word_by_word(sentence: str, tmp: Path) -> tuple[np.ndarray, list[tuple[str, float]]]:
    parts = [silence(LEAD_S)]
    onsets: list[tuple[str, float]] = []
    position = len(parts[0])
    for i, word in enumerate(sentence.split()):
        if i:
            gap = silence(GAPS_S[i % len(GAPS_S)])
            parts.append(gap)
            position += len(gap)
        spoken = _trim(synthesize(word, tmp))
        onsets.append((word, position / 16_000))
        parts.append(spoken)
        position += len(spoken)
    parts.append(silence(0.5))
    return np.concatenate(parts).astype(np.float32), onsets


def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def onset_errors_s(words: list[tuple[str, float]], truth: list[tuple[str, float]]) -> list[float]:
    """|start - true onset| of each recognised word that matches a true word (in order).

    A word right after a true word the model missed is left out: the alignment gives it
    the missed word's time too (a recognition error, not a timing one).
    """
    hyp = [_norm(w) for w, _ in words]
    ref = [_norm(w) for w, _ in truth]
    matcher = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
    errors = []
    matched = {
        block.a + k: block.b + k
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    }
    for a, b in sorted(matched.items()):
        if a == 0 or (a - 1) in matched:
            errors.append(abs(words[b][1] - truth[a][1]))
    return errors


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("words")
    return [_word_by_word(sentence, tmp) for sentence in SENTENCES]


@pytest.fixture(scope="module")
def whisper_dir(models_dir: Path) -> Path:
    return models_dir / "whisper-tiny.en"


def _packed(corpus) -> tuple[np.ndarray, list[tuple[str, float]]]:
    parts, truth, offset_s = [], [], 0.0
    for audio, onsets in corpus:
        parts.append(audio)
        truth.extend((word, offset_s + t) for word, t in onsets)
        offset_s += len(audio) / 16_000
    return np.concatenate(parts).astype(np.float32), truth


def _starts(words: tuple[WordTiming, ...]) -> list[tuple[str, float]]:
    return [(w.word, w.start_s) for w in words]


@pytest.mark.parametrize("timestamps", [False, True], ids=["plain", "packed-timestamped"])
def test_word_starts_near_true_onsets(whisper_dir: Path, corpus, timestamps: bool) -> None:
    from faster_whisper import WhisperModel

    backend = WhisperBackend(
        str(whisper_dir), compute_type="int8", cpu_threads=CPU_THREADS, timestamps=timestamps
    )
    if timestamps:
        # A packed window: all sentences in one item (as several VAD segments are packed).
        corpus = [_packed(corpus)]
    options = RecognitionOptions(word_timestamps=True)
    jobs = [SegmentJob(audio, options) for audio, _ in corpus]
    batched = backend.forward(jobs)
    alone = [backend.forward([job])[0] for job in jobs]
    # Without the option, no words (and no extra alignment pass).
    assert backend.forward([SegmentJob(corpus[0][0])])[0].words == ()

    reference = WhisperModel(str(whisper_dir), device="cpu", compute_type="int8")
    ours: list[float] = []
    theirs: list[float] = []
    for (audio, truth), got, single in zip(corpus, batched, alone, strict=True):
        assert got.words, got.text
        # Batch-mates change nothing (same alignment, one DTW step = 0.02 s at most).
        assert [w.word for w in got.words] == [w.word for w in single.words]
        for a, b in zip(got.words, single.words, strict=True):
            assert abs(a.start_s - b.start_s) <= 0.02 and abs(a.end_s - b.end_s) <= 0.02
        assert all(0 <= w.start_s <= w.end_s <= len(audio) / 16_000 + 0.01 for w in got.words)
        errors = onset_errors_s(_starts(got.words), truth)
        assert len(errors) >= 0.8 * len(truth), (got.text, truth)
        assert max(errors) <= ONSET_TOLERANCE_S, list(zip(got.words, errors))
        ours.extend(errors)
        segments, _ = reference.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
        ref_words = [(w.word.strip(), w.start) for s in segments for w in s.words or ()]
        theirs.extend(onset_errors_s(ref_words, truth))
    mean_ours, mean_theirs = float(np.mean(ours)), float(np.mean(theirs))
    print(
        f"word onset error ({'packed' if timestamps else 'plain'}): ours mean "
        f"{mean_ours:.3f} s max {max(ours):.3f} s over {len(ours)} words; faster-whisper "
        f"transcribe mean {mean_theirs:.3f} s max {max(theirs):.3f} s over {len(theirs)} words"
    )
    assert mean_ours <= mean_theirs + MEAN_ERROR_SLACK_S


def test_onset_matching_can_fail() -> None:
    truth = [("a", 1.0), ("b", 2.0)]
    assert onset_errors_s([("a", 1.0), ("b", 2.5)], truth) == [0.0, 0.5]
    assert onset_errors_s([("x", 1.0)], truth) == []
    assert onset_errors_s([("b", 1.0)], truth) == []  # after a missed word: left out
