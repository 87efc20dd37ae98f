"""Windowing and mapping back (pure; a fake punctuator whose marks are known)."""

# ruff: noqa: RUF001, RUF002, RUF003  (full-width CJK punctuation is the point here)

from __future__ import annotations

from collections.abc import Sequence

import pytest

from serve_app.core.errors import AsrError
from serve_app.punctuation.base import BatchedPunctuator, PunctuationWindow
from serve_app.punctuation.windows import (
    plan_windows,
    punctuate_segments,
    split_request,
)


def _split(text: str) -> list[str]:
    return text.split()


class RuleBasedPunctuator:
    """Marks a word with 。 when the NEXT word is "then" (needs right context) and with ，
    after "so"; "boom" breaks the forward. Token ids are indices into the seen vocabulary."""

    name = "rules"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.words: dict[int, str] = {}
        self.window_lengths: list[int] = []

    def split_words(self, text: str) -> list[str]:
        return text.split()

    def encode(self, words: Sequence[str]) -> tuple[int, ...]:
        ids = []
        for word in words:
            index = self.vocab.setdefault(word, len(self.vocab))
            self.words[index] = word
            ids.append(index)
        return tuple(ids)

    def forward(self, windows: Sequence[PunctuationWindow]) -> list[tuple[str, ...]]:
        out = []
        for window in windows:
            words = [self.words[i] for i in window.token_ids]
            if "boom" in words:
                raise RuntimeError("boom")
            self.window_lengths.append(len(words))
            marks = []
            for k, word in enumerate(words):
                nxt = words[k + 1] if k + 1 < len(words) else None
                marks.append("。" if nxt == "then" else "，" if word == "so" else "")
            out.append(tuple(marks))
        return out

    def warmup(self) -> object:
        return None


def test_windows_tile_the_words_once_with_context() -> None:
    plan = plan_windows(23, core_tokens=10, context_tokens=3)
    assert [(w.start, w.stop, w.core_start, w.core_stop) for w in plan.windows] == [
        (0, 13, 0, 10),
        (7, 23, 10, 20),
        (17, 23, 20, 23),
    ]
    covered = [i for w in plan.windows for i in range(w.core_start, w.core_stop)]
    assert covered == list(range(23))
    assert plan_windows(0, core_tokens=10, context_tokens=3).windows == ()
    with pytest.raises(ValueError):
        plan_windows(5, core_tokens=0, context_tokens=1)


def test_merge_keeps_only_core_marks() -> None:
    plan = plan_windows(5, core_tokens=2, context_tokens=1)
    # Each window marks every token with its own window number: a core token must get
    # the number of the window whose core holds it, never a neighbour's context guess.
    marks = plan.merge([[str(k)] * (w.stop - w.start) for k, w in enumerate(plan.windows)])
    assert marks == ["0", "0", "1", "1", "2"]
    with pytest.raises(ValueError):
        plan.merge([["x"]] * len(plan.windows))


def test_split_request_keeps_segment_of_each_word() -> None:
    words = split_request(["a b", "", "c"], _split)
    assert words.words == ("a", "b", "c")
    assert words.segment_of == (0, 0, 2)
    assert words.num_segments == 3


def test_mark_at_a_segment_boundary_lands_in_the_earlier_segment() -> None:
    words = split_request(["we start now", "then we go", "so far"], _split)
    marks = ["", "", "。", "", "", "", "，", ""]
    assert punctuate_segments(words, marks) == ["We start now.", "Then we go", "so, far."]


def test_rendering_follows_funasr_for_cjk_and_mixed_text() -> None:
    words = split_request(["你好 world", "再见"], _split)
    # ，after a CJK word stays full-width, after an ASCII word becomes ASCII; the request
    # ends with a sentence end even if the model gave none.
    assert punctuate_segments(words, ["，", "，", ""]) == ["你好，world,", "再见。"]


def test_empty_request_and_empty_segments() -> None:
    runner = BatchedPunctuator(RuleBasedPunctuator(), max_batch_tokens=100, max_batch_items=4)
    assert runner.punctuate([[], ["", ""]]) == [[], ["", ""]]


def test_context_crosses_the_boundary_of_windows_and_segments() -> None:
    """'now' needs the next word ('then') to get its 。: the next word sits in the next
    segment AND outside now's window core, so only the right context can supply it."""
    backend = RuleBasedPunctuator()
    runner = BatchedPunctuator(
        backend, max_batch_tokens=1000, max_batch_items=16, core_tokens=3, context_tokens=2
    )
    segments = ["we start now", "then so we go", "then it ends"]
    (texts,) = runner.punctuate([segments])
    assert texts == ["We start now.", "Then so, we go.", "Then it ends."]
    assert max(backend.window_lengths) <= 3 + 2 * 2
    # Without right context the mark after 'now' is lost: the test can fail.
    no_context = BatchedPunctuator(
        RuleBasedPunctuator(),
        max_batch_tokens=1000,
        max_batch_items=16,
        core_tokens=3,
        context_tokens=0,
    )
    assert no_context.punctuate([segments])[0][0] == "We start now"


def test_all_windows_of_all_requests_share_forward_passes() -> None:
    runner = BatchedPunctuator(
        RuleBasedPunctuator(),
        max_batch_tokens=10_000,
        max_batch_items=64,
        core_tokens=4,
        context_tokens=2,
    )
    requests = [[" ".join(f"w{r}x{i}" for i in range(n))] for r, n in enumerate([3, 9, 17])]
    runner.punctuate(requests)
    assert runner.last_stats.num_items == 1 + 3 + 5
    assert runner.last_stats.num_forward_passes == 1


def test_a_failing_window_fails_only_its_request() -> None:
    runner = BatchedPunctuator(RuleBasedPunctuator(), max_batch_tokens=1000, max_batch_items=8)
    ok, bad = runner.punctuate([["all is well then fine"], ["it goes boom"]])
    assert ok == ["All is well. Then fine."]
    assert isinstance(bad, AsrError)
