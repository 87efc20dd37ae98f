"""Batch planning (sort by cost, pack by padded cost, restore order) and the one batch runner.

No Ray, and torch only lazily (to recognise its out-of-memory error): these are shared by
the Serve recognizer, the speaker embedder, the Ray Data job and the benchmarks, and are
unit-tested on their own.

The padded cost of a batch is ``longest item x number of items``: that is the audio the
model actually computes on once every item is padded to the longest. Sorting by duration
before packing keeps neighbours alike in length, so little of that cost is padding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
ErrorT = TypeVar("ErrorT", bound=Exception)
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)
ResultT_co = TypeVar("ResultT_co", covariant=True)

logger = logging.getLogger(__name__)


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
    max_forward_cost: float,
    max_batch_items: int,
    forward_overhead_s: float | None = None,
) -> BatchPlan:
    """Pack items into forward passes whose padded cost stays within ``max_forward_cost``.

    Items are taken longest first (FunASR's AutoModel does the same). With
    ``forward_overhead_s`` unset, a batch closes when adding the next item would push
    ``longest x count`` over the budget or the count over ``max_batch_items`` (fewest
    forwards). With it set, the sorted items are split where the estimated compute
    ``padded seconds + forward_overhead_s x forwards`` is least (:func:`_least_cost_cuts`):
    a device where a forward's fixed cost is small next to padding (FunASR on a CPU,
    docs/BENCHMARKS.md "Batch plan") gets batches of like lengths only. An item longer
    than the budget runs alone.
    """
    if max_forward_cost <= 0 or max_batch_items < 1:
        raise ValueError("max_forward_cost must be > 0 and max_batch_items >= 1")
    order = sorted(range(len(durations_s)), key=lambda i: durations_s[i], reverse=True)
    if forward_overhead_s is not None:
        if forward_overhead_s < 0:
            raise ValueError("forward_overhead_s must be >= 0")
        sorted_s = [float(durations_s[i]) for i in order]
        cuts = _least_cost_cuts(sorted_s, max_forward_cost, max_batch_items, forward_overhead_s)
        spans = list(zip(cuts, cuts[1:]))
        return BatchPlan(
            batches=[order[start:end] for start, end in spans],
            real_s=float(sum(sorted_s)),
            padded_s=sum(sorted_s[start] * (end - start) for start, end in spans),
        )
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
            and candidate_longest_s * (len(current) + 1) <= max_forward_cost
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


def _least_cost_cuts(
    sorted_s: Sequence[float], max_cost: float, max_items: int, overhead_s: float
) -> list[int]:
    """Boundaries ``[0, ..., n]`` splitting longest-first durations into contiguous
    batches (each within ``max_cost`` padded and ``max_items``, or one item alone) with
    the least ``sum(longest x count) + overhead_s x batches``; ties: fewer batches.
    Dynamic programming over end positions, O(n x max_items)."""
    n = len(sorted_s)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n
    start_of = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, max(-1, end - 1 - max_items), -1):
            count = end - start
            padded_s = sorted_s[start] * count  # the batch's first item is its longest
            if count > 1 and padded_s > max_cost:
                break  # longer batches ending here only cost more
            cost, forwards = best[start]
            candidate = (cost + padded_s + overhead_s, forwards + 1)
            if candidate < best[end]:
                best[end] = candidate
                start_of[end] = start
    cuts = [n]
    while cuts[-1] > 0:
        cuts.append(start_of[cuts[-1]])
    return cuts[::-1]


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


# ---------------------------------------------------------------- the runner


@dataclass
class BatchStats:
    """What one :meth:`BatchedRunner.run` call did (for metrics).

    ``real_audio_s`` / ``padded_audio_s`` are in the runner's cost unit: audio seconds for
    every stage so far (recognition segments, embedding windows).
    """

    num_items: int = 0
    num_forward_passes: int = 0
    real_audio_s: float = 0.0
    padded_audio_s: float = 0.0
    num_oom_splits: int = 0
    num_failed_items: int = 0
    forward_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def padding_efficiency(self) -> float:
        return 1.0 if self.padded_audio_s <= 0 else self.real_audio_s / self.padded_audio_s


class ForwardBackend(Protocol[ItemT_contra, ResultT_co]):
    """Anything with one padded forward pass over a list of items (it may raise)."""

    def forward(self, items: Sequence[ItemT_contra]) -> Sequence[ResultT_co]: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (and CPU allocator) out-of-memory, across torch versions."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, (MemoryError, RuntimeError)) and "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class BatchedRunner(Generic[ItemT, ResultT, ErrorT]):
    """Runs a backend's ``forward`` over many items: the engine of every batched model stage.

    Items are grouped by ``group_key`` (items whose options change the forward pass never
    share one), each group is packed by padded cost (:func:`plan_batches` over ``cost_s``),
    and each pack runs as one forward. A failing forward never fails its batch-mates: on
    out-of-memory the pack is halved and retried, on any other error its items are retried
    one by one, and an item that fails alone becomes ``on_item_error(item, exc)`` at its
    position. :meth:`run` restores the input order and never raises for one bad item.
    """

    def __init__(
        self,
        backend: ForwardBackend[ItemT, ResultT],
        *,
        cost_s: Callable[[ItemT], float],
        max_forward_cost: float,
        max_batch_items: int,
        on_item_error: Callable[[ItemT, Exception], ErrorT],
        group_key: Callable[[ItemT], Hashable] | None = None,
        forward_overhead_s: float | None = None,
    ) -> None:
        self.backend = backend
        # A forward's fixed cost in audio seconds (None: fewest forwards): plan_batches.
        self.forward_overhead_s = forward_overhead_s
        self.cost_s = cost_s
        self.max_forward_cost = max_forward_cost
        self.max_batch_items = max_batch_items
        self.on_item_error = on_item_error
        self.group_key = group_key
        self.last_stats = BatchStats()

    def plan(self, items: Sequence[ItemT]) -> list[tuple[list[int], BatchPlan]]:
        """Group by key, then pack each group by padded cost."""
        if self.group_key is None:
            groups = [list(range(len(items)))] if items else []
        else:
            groups = group_indices([self.group_key(item) for item in items])
        return [
            (
                group,
                plan_batches(
                    [self.cost_s(items[i]) for i in group],
                    max_forward_cost=self.max_forward_cost,
                    max_batch_items=self.max_batch_items,
                    forward_overhead_s=self.forward_overhead_s,
                ),
            )
            for group in groups
        ]

    def run(self, items: Sequence[ItemT]) -> list[ResultT | ErrorT]:
        """One result or one item's own error per item, in input order."""
        stats = BatchStats(num_items=len(items))
        results_by_batch: list[tuple[list[int], list[ResultT | ErrorT]]] = []
        for group, plan in self.plan(items):
            for batch in plan.batches:
                indices = [group[i] for i in batch]
                packed = [items[i] for i in indices]
                results_by_batch.append((indices, self._run_isolated(packed, stats)))
        self.last_stats = stats
        return scatter(results_by_batch, len(items)) if items else []

    def _run_isolated(self, items: list[ItemT], stats: BatchStats) -> list[ResultT | ErrorT]:
        started = time.perf_counter()
        try:
            out = self.backend.forward(items)
            stats.forward_s += time.perf_counter() - started
            if len(out) != len(items):
                raise RuntimeError(f"backend returned {len(out)} results for {len(items)} items")
            costs_s = [self.cost_s(item) for item in items]
            stats.num_forward_passes += 1
            stats.batch_sizes.append(len(items))
            stats.real_audio_s += sum(costs_s)
            stats.padded_audio_s += max(costs_s) * len(items)
            return list(out)
        except Exception as exc:
            # Leave the except block before retrying: its traceback holds the failed
            # forward's frames, and with them the activations that ran out of memory.
            oom = is_out_of_memory(exc)
            failure = exc.with_traceback(None) if oom else exc
        if len(items) > 1 and oom:
            # Halve and retry: the two halves need less activation memory each.
            stats.num_oom_splits += 1
            _release_cached_memory()
            mid = len(items) // 2
            logger.warning("out of memory on a batch of %d; splitting", len(items))
            return self._run_isolated(items[:mid], stats) + self._run_isolated(items[mid:], stats)
        if len(items) > 1:
            # Some item broke the whole forward: find it by running each alone.
            logger.warning("batch of %d failed (%r); retrying items alone", len(items), failure)
            results: list[ResultT | ErrorT] = []
            for item in items:
                results.extend(self._run_isolated([item], stats))
            return results
        if oom:
            _release_cached_memory()
        stats.num_failed_items += 1
        return [self.on_item_error(items[0], failure)]
