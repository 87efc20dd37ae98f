"""CT-Transformer backend on random weights: one padded batch == each window alone (fp32).

Random weights make the marks meaningless; what is checked is that batching changes
nothing. Tolerance: rows of a padded batch are computed by differently-shaped matrix
products than the same row alone, so logits may differ in the last float32 bits (the
SANM encoder masks padding exactly: attention scores of padded keys are -inf and the FSMN
memory block zeroes padded frames). Same batch shape (rows permuted) must be bit-exact.
"""

# ruff: noqa: RUF001  (full-width CJK punctuation is the point here)

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.punctuation.base import BatchedPunctuator, PunctuationWindow
from serve_app.punctuation.windows import SENTENCE_END_MARKS

LOGITS_ATOL = 1e-4  # measured max |diff| is printed by the test; fp32 round-off is ~1e-6

WORDS = "the quick brown fox jumps over the lazy dog we shipped it 你 好 世 界".split()


def _windows(vocab_size: int, lengths: list[int], seed: int = 0) -> list[PunctuationWindow]:
    rng = np.random.default_rng(seed)
    return [
        PunctuationWindow(tuple(int(t) for t in rng.integers(1, vocab_size, n))) for n in lengths
    ]


@pytest.fixture(scope="module")
def vocab_size(ct_punc_tiny) -> int:
    return len(ct_punc_tiny._tokenizer.token_list)


def test_loads_as_ct_transformer_with_its_marks(ct_punc_tiny) -> None:
    assert ct_punc_tiny.marks == ("", "", "，", "。", "？", "、")
    out = ct_punc_tiny.warmup()
    assert len(out) == 1 and len(out[0]) > 0


def test_padded_batch_equals_one_at_a_time(ct_punc_tiny, vocab_size: int) -> None:
    lengths = [1, 7, 33, 140, 12, 90, 2, 64]
    windows = _windows(vocab_size, lengths)
    batched = ct_punc_tiny.logits(windows)
    alone = [ct_punc_tiny.logits([w])[0] for w in windows]
    max_diff = max(float((b - a).abs().max()) for b, a in zip(batched, alone))
    print(f"max |logit diff| batched vs alone: {max_diff:.3g}")
    assert max_diff <= LOGITS_ATOL
    assert ct_punc_tiny.forward(windows) == [ct_punc_tiny.forward([w])[0] for w in windows]
    # The marks must actually vary, or equality would prove nothing.
    assert len({m for marks in ct_punc_tiny.forward(windows) for m in marks}) > 1


def test_same_batch_shape_is_bit_exact(ct_punc_tiny, vocab_size: int) -> None:
    windows = _windows(vocab_size, [40, 25, 40, 3, 17], seed=1)
    order = [3, 0, 4, 2, 1]
    first = ct_punc_tiny.logits(windows)
    permuted = ct_punc_tiny.logits([windows[i] for i in order])
    for position, index in enumerate(order):
        assert torch.equal(permuted[position], first[index])


def test_stage_batched_equals_each_request_alone(ct_punc_tiny) -> None:
    rng = np.random.default_rng(2)
    requests = [
        [" ".join(rng.choice(WORDS, size=int(rng.integers(0, 30)))) for _ in range(k)]
        for k in (1, 3, 6, 2)
    ]
    batched = BatchedPunctuator(
        ct_punc_tiny,
        max_batch_tokens=4096,
        max_batch_items=32,
        core_tokens=16,
        context_tokens=8,
    )
    alone = BatchedPunctuator(
        ct_punc_tiny,
        max_batch_tokens=4096,
        max_batch_items=1,
        core_tokens=16,
        context_tokens=8,
    )
    together = batched.punctuate(requests)
    assert batched.last_stats.num_forward_passes < batched.last_stats.num_items
    assert together == [alone.punctuate([r])[0] for r in requests]
    for texts, segments in zip(together, requests):
        assert isinstance(texts, list) and len(texts) == len(segments)
        joined = "".join(texts)
        if joined:
            assert joined[-1] in SENTENCE_END_MARKS | {".", "?"}
