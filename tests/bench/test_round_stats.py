"""Per-round ratios and the bootstrap interval of the storage bench: exact cases, alternation, noise."""
from __future__ import annotations

import random

import pytest

from kvtier.bench.round_stats import ratio_interval, round_ratios
from kvtier.bench.runner import PhaseResult


def test_round_ratios_pair_slices_in_order() -> None:
    tier = PhaseResult("write", 1, slice_walls=[1.0, 2.0, 4.0, 1.0])
    raw = PhaseResult("write", 1, slice_walls=[2.0, 1.0, 3.0, 1.0])  # ratios 2, 0.5, 0.75, 1
    spread = round_ratios(tier, raw)
    assert spread["rounds"] == 4 and spread["min"] == 0.5 and spread["max"] == 2.0
    assert spread["median"] == pytest.approx(0.875)
    assert spread["q1"] == pytest.approx(0.6875) and spread["q3"] == pytest.approx(1.25)
    assert round_ratios(PhaseResult("w", 1), PhaseResult("w", 1))["median"] is None
    with pytest.raises(ValueError):  # unpaired slices are a bench bug, not a statistic
        round_ratios(tier, PhaseResult("write", 1, slice_walls=[1.0]))


def rounds_of(walls: list[tuple[float, float]], ops: list[tuple[int, int]]) -> tuple[PhaseResult, PhaseResult]:
    """Tier and raw write phases from per-round (tier, raw) walls and moved-op counts."""
    tier = PhaseResult("write", 1, slice_walls=[t for t, _ in walls], slice_ops=[{"write": t} for t, _ in ops])
    raw = PhaseResult("write", 1, slice_walls=[r for _, r in walls], slice_ops=[{"write": r} for _, r in ops])
    return tier, raw


def test_ratio_interval_is_exact_when_every_round_agrees() -> None:
    tier, raw = rounds_of([(1.25 * w, w) for w in (1.0, 2.0, 0.5, 3.0, 1.5, 0.7)], [(10, 10)] * 6)
    assert ratio_interval(tier, raw, "write") == pytest.approx([0.8, 0.8])
    tier, raw = rounds_of([(1.0, 1.0)] * 6, [(9, 10)] * 6)  # a miss in every round moves 9 of 10
    assert ratio_interval(tier, raw, "write") == pytest.approx([0.9, 0.9])


def test_ratio_interval_keeps_the_leader_alternation() -> None:
    # The follower is twice as fast in every round: alternation cancels it exactly, in any resample
    # that keeps as many tier-led (even) as raw-led (odd) rounds.
    tier, raw = rounds_of([(2.0, 1.0), (1.0, 2.0)] * 4, [(10, 10)] * 8)
    assert ratio_interval(tier, raw, "write") == pytest.approx([1.0, 1.0])


def test_ratio_interval_widens_with_noise_and_holds_the_pooled_ratio() -> None:
    gen = random.Random(1)
    walls = [(gen.uniform(0.5, 2.0), gen.uniform(0.5, 2.0)) for _ in range(16)]
    tier, raw = rounds_of(walls, [(10, 10)] * 16)
    low, high = ratio_interval(tier, raw, "write") or (None, None)
    pooled = sum(r for _, r in walls) / sum(t for t, _ in walls)
    assert low is not None and high is not None and low < pooled < high and high - low > 0.1
    narrow = ratio_interval(*rounds_of(walls * 16, [(10, 10)] * 256), "write")
    assert narrow is not None and narrow[1] - narrow[0] < (high - low) / 2


def test_ratio_interval_needs_two_rounds_with_op_counts() -> None:
    assert ratio_interval(*rounds_of([(1.0, 1.0)], [(10, 10)]), "write") is None
    walls_only = PhaseResult("write", 1, slice_walls=[1.0, 1.0])
    assert ratio_interval(walls_only, walls_only, "write") is None
    assert ratio_interval(*rounds_of([(1.0, 1.0)] * 4, [(0, 0)] * 4), "write") is None  # nothing moved
