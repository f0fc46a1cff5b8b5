"""How much of a storage-bench ratio is the disk's noise: per-round spread and a bootstrap interval.

A round is a slice per side (tier, python, fio's modes) that moved exactly the same ops one after
the other, so the round is the unit of every statistic here; each compares the tier with one other
side (`raw` below). Rounds alternate which side leads: even rounds (0, 2, ...) are led by the tier,
odd ones by python.
"""
from __future__ import annotations

import random
import statistics
from typing import Any

from kvtier.bench.runner import PhaseResult

WARMUP_ROUNDS = 1  # untimed rounds before each phase's counted ones (rounds.Rounds.run says why)
INTERVAL_LEVEL = 0.95
RESAMPLES = 2000


def round_ratios(tier: PhaseResult, raw: PhaseResult) -> dict[str, Any]:
    """Spread of the per-round ratios raw wall / tier wall (a round's two slices move the same ops).

    The headline ratio pools every round; this shows how much of it is the disk's own noise.
    Rounds that moved nothing (the write budget ran out) are left out.
    """
    walls = zip(tier.slice_walls, raw.slice_walls, strict=True)
    moved = [sum(ops.values()) > 0 for ops in tier.slice_ops] if len(tier.slice_ops) == len(tier.slice_walls) \
        else [True] * len(tier.slice_walls)
    pairs = sorted(r / t for (t, r), has_ops in zip(walls, moved) if t > 0 and r > 0 and has_ops)
    if not pairs:
        return {"rounds": 0, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    q1, median, q3 = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) > 1 else pairs * 3
    return {"rounds": len(pairs), "min": pairs[0], "q1": q1, "median": median, "q3": q3, "max": pairs[-1]}


def ratio_interval(tier: PhaseResult, raw: PhaseResult, kind: str, *, resamples: int = RESAMPLES,
                   seed: int = 0) -> list[float] | None:
    """A 95% bootstrap interval `[low, high]` of the pooled `kind` ratio (tier GB/s / raw GB/s).

    Whole rounds are resampled with replacement, tier-led and raw-led rounds separately so that
    every resample keeps the alternation that cancels the follower's advantage. The interval
    covers the drift of the disk within this run only: runs minutes apart differ more (where
    the files land), so compare runs by their medians. None with fewer than 2 rounds or
    without per-slice op counts.
    """
    if len(tier.slice_ops) != len(tier.slice_walls) or len(raw.slice_ops) != len(raw.slice_walls):
        return None
    rounds = [(t_wall, t_ops.get(kind, 0), r_wall, r_ops.get(kind, 0)) for t_wall, t_ops, r_wall, r_ops
              in zip(tier.slice_walls, tier.slice_ops, raw.slice_walls, raw.slice_ops, strict=True)]
    if len(rounds) < 2:
        return None
    strata = [rounds[0::2], rounds[1::2]] if len(rounds) >= 4 else [rounds]
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        sample = [r for stratum in strata for r in rng.choices(stratum, k=len(stratum))]
        value = _pooled_ratio(sample)
        if value is not None:
            values.append(value)
    if not values:
        return None
    values.sort()
    tail = (1 - INTERVAL_LEVEL) / 2
    return [values[round(tail * (len(values) - 1))], values[round((1 - tail) * (len(values) - 1))]]


def _pooled_ratio(rounds: list[tuple[float, int, float, int]]) -> float | None:
    """(tier ops / tier wall) / (raw ops / raw wall) over `rounds`; block bytes cancel."""
    tier_wall = sum(r[0] for r in rounds)
    raw_wall = sum(r[2] for r in rounds)
    tier_ops = sum(r[1] for r in rounds)
    raw_ops = sum(r[3] for r in rounds)
    if tier_wall <= 0 or raw_wall <= 0 or raw_ops == 0:
        return None
    return (tier_ops / tier_wall) / (raw_ops / raw_wall)
