"""Pure batch planning: sort by duration, pack by padded cost, restore order.

No Ray, no torch: these functions are shared by the Serve recognizer, the Ray Data job and
the benchmarks, and are unit-tested on their own.

The padded cost of a batch is ``longest item x number of items``: that is the audio the
model actually computes on once every item is padded to the longest. Sorting by duration
before packing keeps neighbours alike in length, so little of that cost is padding.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPlan:
    """Indices into the input, one list per forward pass, longest batches first."""

    batches: list[list[int]]
    real_s: float
    padded_s: float

    @property
    def padding_efficiency(self) -> float:
        """Real audio / padded audio (1.0 means no padding at all)."""
        return 1.0 if self.padded_s <= 0 else self.real_s / self.padded_s


def plan_batches(
    durations_s: Sequence[float],
    *,
    max_batch_audio_s: float,
    max_batch_items: int,
) -> BatchPlan:
    """Pack items into batches whose padded cost stays within ``max_batch_audio_s``.

    Items are taken longest first (FunASR's AutoModel does the same); a batch closes when
    adding the next item would push ``longest x count`` over the budget or the count over
    ``max_batch_items``. An item longer than the budget runs alone.
    """
    if max_batch_audio_s <= 0 or max_batch_items < 1:
        raise ValueError("max_batch_audio_s must be > 0 and max_batch_items >= 1")
    order = sorted(range(len(durations_s)), key=lambda i: durations_s[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest_s = 0.0
    padded_s = 0.0
    for index in order:
        duration_s = float(durations_s[index])
        # Sorted descending: the first item of a batch is its longest.
        candidate_longest_s = longest_s if current else duration_s
        fits = (
            len(current) < max_batch_items
            and candidate_longest_s * (len(current) + 1) <= max_batch_audio_s
        )
        if current and not fits:
            batches.append(current)
            padded_s += longest_s * len(current)
            current = []
        if not current:
            longest_s = duration_s
        current.append(index)
    if current:
        batches.append(current)
        padded_s += longest_s * len(current)
    real_s = float(sum(float(d) for d in durations_s))
    return BatchPlan(batches=batches, real_s=real_s, padded_s=padded_s)


def group_indices(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def scatter(results_by_batch: Sequence[tuple[Sequence[int], Sequence[T]]], size: int) -> list[T]:
    """Put each batch's results back at their original indices."""
    out: list[T | None] = [None] * size
    for indices, results in results_by_batch:
        if len(indices) != len(results):
            raise ValueError("a batch returned a different number of results than items")
        for index, result in zip(indices, results):
            out[index] = result
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise ValueError(f"no result for items {missing}")
    return out  # type: ignore[return-value]


def item_cost_s(duration_s: float, *, max_batch_audio_s: float, max_batch_items: int) -> float:
    """What one item costs against a seconds budget that also caps the item count.

    ``@serve.batch`` has a single capacity. Charging each item at least
    ``max_batch_audio_s / max_batch_items`` makes that one capacity enforce both limits.
    """
    return max(float(duration_s), max_batch_audio_s / max_batch_items)


def bucket_by(items: Sequence[T], key: Callable[[T], float], width: float) -> dict[int, list[T]]:
    """Bucket items by ``key // width`` (used by the offline job to keep lengths alike)."""
    buckets: dict[int, list[T]] = {}
    for item in items:
        buckets.setdefault(int(key(item) // width), []).append(item)
    return buckets
