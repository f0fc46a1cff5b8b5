"""Rank functions that fail on purpose, for launch's tests (spawned ranks import them by name)."""
from __future__ import annotations

import os
import signal

import torch.distributed as dist

from kvtier.parallel.launch import RankContext


def killed_on_rank_one(ctx: RankContext) -> None:
    """Rank 1 dies by SIGKILL while the others wait for it in a collective."""
    if ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


def raises_on_last_rank(ctx: RankContext) -> None:
    if ctx.rank == ctx.parallel.world_size - 1:
        raise ValueError(f"rank {ctx.rank} could not open its tier")
    dist.barrier()
