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
