"""BatchedRecognizer failure isolation over the real (tiny) FunASR backend.

A backend wrapper injects the failures: one poisoned item that breaks every forward it is
in, and an out-of-memory error on any batch above a size. Healthy items must come out
exactly as they do alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.core.errors import InvalidRequestError, RecognitionError
from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript
from serve_app.recognizers.base import BatchedRecognizer
from serve_app.recognizers.funasr_backend import FunAsrBackend


class FaultyBackend:
    """Delegates to a real backend, failing the way a GPU or a bad input would."""

    def __init__(
        self,
        inner: FunAsrBackend,
        *,
        poisoned_num_samples: int | None = None,
        oom_above_items: int | None = None,
        oom_error: type[Exception] | None = None,
    ) -> None:
        self.inner = inner
        self.poisoned_num_samples = poisoned_num_samples
        self.oom_above_items = oom_above_items
        self.oom_error = oom_error
        self.batch_sizes: list[int] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def group_key(self, options: RecognitionOptions) -> object:
        return self.inner.group_key(options)

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        if any(len(job.audio) == self.poisoned_num_samples for job in jobs):
            raise ValueError("poisoned item in the batch")
        if self.oom_above_items is not None and len(jobs) > self.oom_above_items:
            assert self.oom_error is not None
            raise self.oom_error("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batch_sizes.append(len(jobs))
        return self.inner.forward(jobs)


@pytest.fixture(scope="module")
def paraformer(random_models_dir: Path) -> FunAsrBackend:
    return FunAsrBackend("paraformer-tiny", models_dir=random_models_dir)


@pytest.fixture(scope="module")
def jobs(noise_audio: list[np.ndarray]) -> list[SegmentJob]:
    return [SegmentJob(audio=samples) for samples in noise_audio]


def alone_texts(backend: FunAsrBackend, jobs: list[SegmentJob]) -> list[str]:
    return [backend.forward([job])[0].text for job in jobs]


def test_a_poisoned_item_fails_alone(paraformer: FunAsrBackend, jobs: list[SegmentJob]) -> None:
    poisoned = 3
    backend = FaultyBackend(paraformer, poisoned_num_samples=len(jobs[poisoned].audio))
    recognizer = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    results = recognizer.transcribe_batch(jobs)

    assert isinstance(results[poisoned], RecognitionError)
    assert "poisoned" in results[poisoned].message
    expected = alone_texts(paraformer, jobs)
    for i, result in enumerate(results):
        if i != poisoned:
            assert isinstance(result, SegmentTranscript)
            assert result.text == expected[i]
    assert recognizer.last_stats.num_failed_items == 1


@pytest.mark.parametrize("oom_error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_splits_the_batch_and_every_item_succeeds(
    paraformer: FunAsrBackend, jobs: list[SegmentJob], oom_error: type[Exception]
) -> None:
    backend = FaultyBackend(paraformer, oom_above_items=2, oom_error=oom_error)
    recognizer = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    results = recognizer.transcribe_batch(jobs)

    assert all(isinstance(result, SegmentTranscript) for result in results)
    assert [r.text for r in results] == alone_texts(paraformer, jobs)  # type: ignore[union-attr]
    assert recognizer.last_stats.num_oom_splits >= 1
    assert recognizer.last_stats.num_failed_items == 0
    assert max(backend.batch_sizes) == 2
    assert sum(backend.batch_sizes) == len(jobs)


class _PickyBackend:
    """Rejects one option value with a typed error, like SenseVoice's language check."""

    name = "picky"

    def validate_options(self, options: RecognitionOptions) -> None:
        if options.language == "xx":
            raise InvalidRequestError("language 'xx' is not supported", param="language")

    def group_key(self, options: RecognitionOptions) -> object:
        return options.language

    def forward(self, jobs):
        for job in jobs:
            self.validate_options(job.options)
        return [SegmentTranscript(text="ok") for _ in jobs]

    def warmup(self) -> None:
        pass


def test_typed_errors_pass_through_unwrapped() -> None:
    recognizer = BatchedRecognizer(_PickyBackend(), max_forward_audio_s=60, max_batch_items=8)
    audio = np.zeros(16_000, np.float32)
    bad = SegmentJob(audio, RecognitionOptions(language="xx"))
    good = SegmentJob(audio, RecognitionOptions(language="en"))
    results = recognizer.transcribe_batch([bad, good])
    assert isinstance(results[0], InvalidRequestError)  # a 400 at the ingress, not a 500
    assert results[1].text == "ok"
    with pytest.raises(InvalidRequestError):
        recognizer.validate(bad.options)
    recognizer.validate(good.options)


class _LeakCheckingBackend:
    """Runs out of memory on batches of more than one item while holding a big "activation"
    in its frame; records whether the previous attempt's activation was still alive."""

    name = "leak-check"

    def __init__(self) -> None:
        self.previous: list[weakref.ref] = []
        self.alive_at_retry: list[bool] = []

    def group_key(self, options: RecognitionOptions) -> object:
        return None

    def warmup(self) -> None:
        return None

    def forward(self, jobs: Sequence[SegmentJob]) -> list[SegmentTranscript]:
        self.alive_at_retry.append(any(ref() is not None for ref in self.previous))
        activation = torch.zeros(1024)
        self.previous.append(weakref.ref(activation))
        if len(jobs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [SegmentTranscript(text="ok") for _ in jobs]


def test_oom_split_frees_the_failed_forward_before_the_halves_run() -> None:
    backend = _LeakCheckingBackend()
    runner = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    jobs = [SegmentJob(np.zeros(16000, dtype=np.float32)) for _ in range(4)]
    results = runner.transcribe_batch(jobs)
    assert [r.text for r in results] == ["ok"] * 4
    assert runner.last_stats.num_oom_splits == 3
    # Retrying inside the except block would keep the failed batch's frame (and its
    # activations) alive through the traceback while the halves run.
    assert backend.alive_at_retry == [False] * len(backend.alive_at_retry)


def test_the_batch_plan_takes_the_backends_forward_overhead(paraformer: FunAsrBackend) -> None:
    """``forward_overhead_s: auto`` (the default) plans with the backend's own figure (FunASR
    on a CPU declares one: arrival-order segments are not padded to the longest); a number
    overrides it; null keeps the fewest-forwards plan."""
    from serve_app.config import BatchSettings
    from serve_app.recognizers.factory import batched

    assert paraformer.forward_overhead_s == 1.0  # CPU
    batch = {"max_forward_audio_s": 60.0, "max_batch_items": 8}
    lengths_s = [20.0, 19.0, 5.0, 4.0, 4.0]
    jobs = [SegmentJob(audio=np.zeros(int(s * 16000), dtype=np.float32)) for s in lengths_s]
    plans = {}
    for overhead in ("auto", 2.5, None):
        runner = batched(paraformer, BatchSettings(**batch, forward_overhead_s=overhead))
        plans[overhead] = [len(b) for _, plan in runner.plan(jobs) for b in plan.batches]
    assert runner.forward_overhead_s is None
    assert plans["auto"] == [2, 1, 2]  # 20+19 | 5 | 4+4
    assert plans[None] == [3, 2]  # filled up to 60 s: 5 s padded to 20, 4 s to 4
    assert batched(paraformer, BatchSettings(**batch)).forward_overhead_s == 1.0
    explicit = BatchSettings(**batch, forward_overhead_s=2.5)
    assert batched(paraformer, explicit).forward_overhead_s == 2.5
