"""Pure windowing for punctuation: a request's segments -> overlapping windows -> marks back.

Punctuation needs context across segment boundaries (whether a segment's last word ends a
sentence depends on how the next segment starts), so the words of ALL of a request's
segments, in time order, are cut into windows of ``core_tokens`` words, each widened by up
to ``context_tokens`` words of its neighbours on each side. The model sees the whole
window; only the marks it predicts for the window's core are kept, so every word gets its
mark from exactly one window, with context on both sides unless it is near the request's
start or end. The mark after a word belongs to that word's segment: a mark after the last
word of a segment ends that segment's text, never starts the next one's. Segment times are
not touched.

Rendering follows FunASR's CT-Transformer output: marks are the model's full-width
characters after CJK words and ASCII ``, . ?`` after ASCII words, a space only between two
ASCII words, the first ASCII word of each sentence capitalised (only its first letter:
FunASR's ``str.capitalize`` would also lower-case "iPhone"), and the request's last word
always ends a sentence.
"""

# ruff: noqa: RUF001  (full-width CJK punctuation is the point here)

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_CORE_TOKENS = 100
DEFAULT_CONTEXT_TOKENS = 20
SENTENCE_END_MARKS = frozenset({"。", "？"})
DEFAULT_SENTENCE_END = "。"
_ASCII_MARKS = {"，": ",", "。": ".", "？": "?"}


@dataclass(frozen=True)
class RequestWords:
    """A request's words in time order and the segment each word came from."""

    words: tuple[str, ...]
    segment_of: tuple[int, ...]
    num_segments: int


@dataclass(frozen=True)
class Window:
    """Words ``[start, stop)`` go to the model; marks of ``[core_start, core_stop)`` are kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class WindowPlan:
    windows: tuple[Window, ...]
    num_words: int

    def merge(self, window_marks: Sequence[Sequence[str]]) -> list[str]:
        """One mark per word from each window's core (``""`` = none)."""
        if len(window_marks) != len(self.windows):
            raise ValueError("one marks sequence per window is needed")
        marks = [""] * self.num_words
        for window, got in zip(self.windows, window_marks):
            if len(got) != window.stop - window.start:
                raise ValueError(
                    f"window of {window.stop - window.start} tokens got {len(got)} marks"
                )
            for index in range(window.core_start, window.core_stop):
                marks[index] = got[index - window.start]
        return marks


def split_request(
    segment_texts: Sequence[str], split_words: Callable[[str], list[str]]
) -> RequestWords:
    """Each segment split on its own (a word never spans two segments), then concatenated."""
    words: list[str] = []
    segment_of: list[int] = []
    for index, text in enumerate(segment_texts):
        for word in split_words(text):
            words.append(word)
            segment_of.append(index)
    return RequestWords(tuple(words), tuple(segment_of), len(segment_texts))


def plan_windows(num_words: int, *, core_tokens: int, context_tokens: int) -> WindowPlan:
    """Cores of ``core_tokens`` words tiling ``[0, num_words)``, each with its context."""
    if core_tokens < 1 or context_tokens < 0:
        raise ValueError("core_tokens must be >= 1 and context_tokens >= 0")
    windows = []
    for core_start in range(0, num_words, core_tokens):
        core_stop = min(core_start + core_tokens, num_words)
        windows.append(
            Window(
                start=max(0, core_start - context_tokens),
                stop=min(num_words, core_stop + context_tokens),
                core_start=core_start,
                core_stop=core_stop,
            )
        )
    return WindowPlan(tuple(windows), num_words)


def _is_ascii_word(word: str) -> bool:
    return len(word[0].encode()) == 1


def _capitalized(word: str) -> str:
    return word[:1].upper() + word[1:]


def punctuate_segments(words: RequestWords, marks: Sequence[str]) -> list[str]:
    """Each segment's text with its words' marks inserted (empty segments stay empty)."""
    if len(marks) != len(words.words):
        raise ValueError("one mark per word is needed")
    marks = list(marks)
    if marks and marks[-1] not in SENTENCE_END_MARKS:
        marks[-1] = DEFAULT_SENTENCE_END  # FunASR ends the text with a sentence end too
    parts: list[list[str]] = [[] for _ in range(words.num_segments)]
    sentence_start = True
    previous: tuple[int, str] | None = None  # (segment, word) of the previous word
    for word, segment, mark in zip(words.words, words.segment_of, marks):
        ascii_word = _is_ascii_word(word)
        text = _capitalized(word) if sentence_start and ascii_word else word
        if (
            previous is not None
            and previous[0] == segment
            and ascii_word
            and _is_ascii_word(previous[1])
        ):
            text = " " + text
        if mark:
            text += _ASCII_MARKS.get(mark, mark) if ascii_word else mark
        parts[segment].append(text)
        sentence_start = mark in SENTENCE_END_MARKS
        previous = (segment, word)
    return ["".join(part) for part in parts]
