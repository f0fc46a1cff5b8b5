"""Agreement: how the ranks of a parallel layout make the cache's decisions identically.

Each rank holds its own shard of every block, in its own tiers, so a lower tier can serve a
block on one rank and miss it on another (evicted, damaged, unreadable). Where the cache's
answer depends on a tier (how many blocks a prompt finds below the device, whether its reads
are done, how many of them verified), every rank takes the minimum over all ranks: one rank's
miss is everyone's miss, and the ranks' block managers, schedulers and steps stay in lockstep.
Everything else the cache decides is a pure function of the calls it gets, the same on every rank.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


class Agreement:
    """A single process agrees with itself: the values come back as they are."""

    def min(self, values: Sequence[int]) -> list[int]:
        """Each value's minimum over every rank (all ranks call this with as many values, in the same order)."""
        return list(values)


class RanksAgreement(Agreement):
    """The minimum over the ranks of `group` (the world by default), one all-reduce per call."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        self.num_calls = 0

    def min(self, values: Sequence[int]) -> list[int]:
        self.num_calls += 1
        if not values:
            return []
        tensor = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.group)
        return [int(v) for v in tensor.tolist()]
