import random

import pytest

from serve_app.core.batching import group_indices, item_cost_s, plan_batches, scatter


def test_plan_respects_padded_budget_and_item_cap():
    rng = random.Random(0)
    durations = [rng.uniform(0.5, 30) for _ in range(200)]
    plan = plan_batches(durations, max_forward_cost=120, max_batch_items=16)
    seen = sorted(i for b in plan.batches for i in b)
    assert seen == list(range(200))  # every item exactly once
    for batch in plan.batches:
        longest = max(durations[i] for i in batch)
        assert len(batch) <= 16
        assert longest * len(batch) <= 120 or len(batch) == 1


def test_sorting_cuts_padding_against_arrival_order():
    rng = random.Random(1)
    durations = [rng.choice([1.0, 2.0, 25.0, 28.0]) for _ in range(64)]
    plan = plan_batches(durations, max_forward_cost=200, max_batch_items=8)
    # Arrival-order chunks of 8 with the same cap, for comparison.
    naive_padded = sum(
        max(durations[i : i + 8]) * len(durations[i : i + 8]) for i in range(0, 64, 8)
    )
    assert plan.padded_s < naive_padded
    assert plan.padding_efficiency > 0.8


def test_item_longer_than_budget_runs_alone():
    plan = plan_batches([50.0, 1.0, 1.0], max_forward_cost=20, max_batch_items=8)
    assert plan.batches[0] == [0]
    assert sorted(plan.batches[1]) == [1, 2]


def test_invalid_budget_rejected():
    with pytest.raises(ValueError):
        plan_batches([1.0], max_forward_cost=0, max_batch_items=1)


def test_scatter_restores_order_and_detects_gaps():
    assert scatter([([2, 0], ["c", "a"]), ([1], ["b"])], 3) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        scatter([([0], ["a"])], 2)
    with pytest.raises(ValueError):
        scatter([([0, 1], ["a"])], 2)


def test_group_indices_keeps_first_appearance_order():
    assert group_indices(["x", "y", "x", "z", "y"]) == [[0, 2], [1, 4], [3]]


def test_item_cost_enforces_item_cap_through_seconds():
    budget, cap = 240.0, 32
    short = item_cost_s(0.5, max_batch_audio_s=budget, max_batch_items=cap)
    assert short == pytest.approx(budget / cap)
    assert int(budget // short) == cap  # at most `cap` short items fit the budget
    assert item_cost_s(20.0, max_batch_audio_s=budget, max_batch_items=cap) == 20.0


# -- the least-cost plan (forward_overhead_s set) -----------------------------------------


def _brute_force_cost(sorted_s, max_cost, max_items, overhead_s):
    """Least sum(longest x count) + overhead x forwards over every contiguous split."""
    n = len(sorted_s)
    best = float("inf")
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        cost = 0.0
        for start, end in zip(cuts, cuts[1:]):
            count = end - start
            padded = sorted_s[start] * count
            if count > max_items or (count > 1 and padded > max_cost):
                break
            cost += padded + overhead_s
        else:
            best = min(best, cost)
    return best


@pytest.mark.parametrize("overhead_s", [0.0, 0.5, 2.0, 10.0])
def test_least_cost_plan_is_optimal_and_within_the_limits(overhead_s):
    rng = random.Random(7)
    for _ in range(40):
        durations = [round(rng.uniform(0.5, 25.0), 1) for _ in range(rng.randint(1, 9))]
        plan = plan_batches(
            durations, max_forward_cost=40, max_batch_items=4, forward_overhead_s=overhead_s
        )
        assert sorted(i for b in plan.batches for i in b) == list(range(len(durations)))
        for batch in plan.batches:
            assert len(batch) <= 4
            assert max(durations[i] for i in batch) * len(batch) <= 40 or len(batch) == 1
        cost = plan.padded_s + overhead_s * len(plan.batches)
        ordered = sorted(durations, reverse=True)
        assert cost == pytest.approx(_brute_force_cost(ordered, 40, 4, overhead_s))


def test_least_cost_plan_does_not_pad_where_a_forward_costs_little():
    # An arrival-order handful, as a coalesced Serve batch holds: greedy filling pads the
    # short ones to the longest; with a small per-forward cost they go on their own.
    durations = [20.0, 19.0, 5.0, 4.0, 4.0]
    greedy = plan_batches(durations, max_forward_cost=60, max_batch_items=8)
    least = plan_batches(durations, max_forward_cost=60, max_batch_items=8, forward_overhead_s=1)
    assert greedy.batches == [[0, 1, 2], [3, 4]]
    # 20+19 | 5 | 4+4: 53 s padded in 3 forwards (56), where 20 | 19 | 5 | 4+4 costs
    # 52 + 4 (a tie: fewer forwards win) and greedy's 60 + 8 in 2 costs 70.
    assert least.batches == [[0, 1], [2], [3, 4]]
    assert least.padded_s == pytest.approx(53)
    assert greedy.padded_s == pytest.approx(68)
    # Ties go to fewer forwards: equal lengths share one (no padding to lose).
    same = plan_batches([3.0] * 6, max_forward_cost=60, max_batch_items=4, forward_overhead_s=1)
    assert [len(b) for b in same.batches] == [4, 2]


def test_a_large_overhead_needs_no_more_forwards_than_greedy():
    rng = random.Random(3)
    durations = [rng.uniform(0.5, 30) for _ in range(120)]
    greedy = plan_batches(durations, max_forward_cost=120, max_batch_items=16)
    least = plan_batches(
        durations, max_forward_cost=120, max_batch_items=16, forward_overhead_s=1e6
    )
    assert len(least.batches) == len(greedy.batches)
    assert least.padded_s <= greedy.padded_s + 1e-9
    with pytest.raises(ValueError):
        plan_batches([1.0], max_forward_cost=10, max_batch_items=2, forward_overhead_s=-1)
