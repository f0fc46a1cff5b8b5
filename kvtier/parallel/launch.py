"""Start the ranks of a tensor x pipeline parallel run: spawned here, or under torchrun.

`launch(fn, parallel, *args)` spawns `parallel.world_size` processes (torch.multiprocessing,
start method spawn), joins them into one torch.distributed world (gloo on CPU, NCCL when the
device is CUDA) through a file store in a private temporary folder (no port to race for), and
calls `fn(rank_context, *args)` in each. When a rank dies (an exception, a signal, SIGKILL),
the others are stopped at once and RankFailedError names the rank and why; no rank is left
waiting in a collective. Under torchrun (RANK and WORLD_SIZE set) this process is one rank:
it joins the world from the environment and runs `fn` itself.
"""
from __future__ import annotations

import datetime
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException, start_processes

from kvtier.errors import KVTierError
from kvtier.parallel.shards import ParallelConfig
from kvtier.parallel.transform import stage_groups

COLLECTIVE_TIMEOUT_S = 120.0
"""How long a collective may wait for a peer (torchrun only: spawned ranks are stopped by `launch`
as soon as one dies). Far above any step here."""

GRACE_PERIOD_S = 2.0
"""How long the other ranks get to exit on their own after one died, before SIGTERM then SIGKILL."""


class RankFailedError(KVTierError):
    """A rank of a parallel run died; the others were stopped."""

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


@dataclass(frozen=True, slots=True)
class RankContext:
    """What `fn` gets on each rank: who it is and the group of its pipeline stage's ranks."""

    rank: int
    parallel: ParallelConfig
    tp_group: Any
    device: str


RankFn = Callable[..., None]


def launch(fn: RankFn, parallel: ParallelConfig, *args: Any, device: str = "cpu") -> int | None:
    """Run `fn(RankContext, *args)` on every rank of `parallel` (see the module docstring); returns
    the rank this process ran under torchrun, None when the ranks were spawned (and have all ended).

    `fn` and `args` cross into spawned processes, so `fn` must be a module-level function.

    Raises:
        RankFailedError: a rank raised or died (the message names it and says how).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        if world != parallel.world_size:
            raise ValueError(f"torchrun started {world} ranks, --tp {parallel.tp_size} --pp {parallel.pp_size} "
                             f"needs {parallel.world_size}; pass --nproc-per-node {parallel.world_size}")
        rank = int(os.environ["RANK"])
        _run_rank(rank, fn, parallel, "env://", device, args)
        return rank
    store = tempfile.mkdtemp(prefix="kvtier-ranks-")
    try:
        context = start_processes(_spawned, args=(fn, parallel, store, device, args),  # type: ignore[no-untyped-call]
                                  nprocs=parallel.world_size, join=False, start_method="spawn")
        try:
            while not context.join(grace_period=GRACE_PERIOD_S):
                pass
        except ProcessException as exc:
            rank, how = _first_failure(store, [p.exitcode for p in context.processes], exc)
            raise _failed(parallel, rank, how) from None
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return None


def _first_failure(store: str, exit_codes: list[int | None], exc: ProcessException) -> tuple[int, str]:
    """The rank that failed first and how: the earliest error a rank raised that was not the loss of a
    peer; else a rank a signal killed (not the SIGTERM `join` sends the survivors); else what join saw.

    NOTE: when one rank dies, its peers' collectives fail too ("connection closed by peer"), and any
    of them may be the first process join sees exit; the cause is the rank whose failure came first.
    """
    raised = []
    for name in os.listdir(store):
        if name.startswith("failed."):
            with open(os.path.join(store, name), encoding="utf-8") as f:
                when, peer_lost, message = f.read().split("\n", 2)
            raised.append((peer_lost == "1", float(when), int(name.split(".")[1]), message))
    own = sorted(r for r in raised if not r[0])
    if own:
        return own[0][2], "raised " + own[0][3]
    by_signal = [(rank, -code) for rank, code in enumerate(exit_codes)
                 if code is not None and code < 0 and -code != signal.SIGTERM]
    if by_signal:
        rank, number = by_signal[0]
        return rank, f"was killed by {signal.Signals(number).name}"
    if isinstance(exc, ProcessExitedException):
        how = f"was killed by {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
        return exc.error_index, how
    return exc.error_index, "raised " + _last_line(str(exc))


def _failed(parallel: ParallelConfig, rank: int, how: str) -> RankFailedError:
    stage, tp_rank = divmod(rank, parallel.tp_size)
    return RankFailedError(f"rank {rank} of {parallel.world_size} (pipeline stage {stage}, tensor rank {tp_rank}) "
                           f"{how}; the other ranks were stopped", rank)


def _last_line(traceback: str) -> str:
    lines = [line for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "an exception"


def _spawned(index: int, fn: RankFn, parallel: ParallelConfig, store: str, device: str,
             args: tuple[Any, ...]) -> None:
    # NOTE: the ranks share this machine's cores; each gets its share so that none oversubscribes
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel.world_size))
    try:
        _run_rank(index, fn, parallel, f"file://{store}/store", device, args)
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        with open(os.path.join(store, f"failed.{index}"), "w", encoding="utf-8") as f:
            f.write(f"{time.time()}\n{int(_is_peer_lost(exc))}\n{message}")
        raise


def _is_peer_lost(exc: BaseException) -> bool:
    """Whether a collective failed because another rank went away (not this rank's own fault)."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("connection closed by peer", "connection reset by peer", "broken pipe"))


def _run_rank(rank: int, fn: RankFn, parallel: ParallelConfig, init_method: str, device: str,
              args: tuple[Any, ...]) -> None:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank,
                            world_size=parallel.world_size, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        groups = stage_groups(parallel)
        fn(RankContext(rank, parallel, groups[rank // parallel.tp_size], device), *args)
    finally:
        dist.destroy_process_group()
