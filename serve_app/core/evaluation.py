"""Word error rate, used by the tests, the load generator and the benchmarks."""

from __future__ import annotations

import re
from collections.abc import Sequence

_NON_WORD = re.compile(r"[^a-z0-9' ]+")
_NUMBER_WORDS = {
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
    "10": "ten",
}


def normalize_words(text: str) -> list[str]:
    """Lower-case, drop punctuation, spell single digits (Whisper writes '7' for 'seven')."""
    words = _NON_WORD.sub(" ", text.lower().replace("-", " ")).split()
    return [_NUMBER_WORDS.get(w, w) for w in words]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    edits = words = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words = normalize_words(ref)
        edits += edit_distance(ref_words, normalize_words(hyp))
        words += len(ref_words)
    return edits / max(words, 1)


# Languages scored by characters (CER): no spaces between words.
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "yue"})


def error_units(text: str, language: str) -> list[str]:
    """What an error rate counts in ``language``: lower-case words without punctuation
    (accents kept), or characters for Chinese and Japanese."""
    cleaned = re.sub(r"[^\w\s']", " ", text.lower())
    if language in CHARACTER_LANGUAGES:
        return [ch for ch in cleaned if not ch.isspace()]
    return cleaned.split()


def unit_error_rate(references: Sequence[str], hypotheses: Sequence[str], language: str) -> float:
    """Corpus WER (CER for :data:`CHARACTER_LANGUAGES`): total edits / total reference units."""
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        ref_units = error_units(ref, language)
        edits += edit_distance(ref_units, error_units(hyp, language))
        total += len(ref_units)
    return edits / max(total, 1)
