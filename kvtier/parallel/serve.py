"""Run requests on the engine over a tensor x pipeline parallel model: what `kvtier generate --tp --pp`
does on each rank, and the call that launches the ranks and collects rank 0's results.

Every rank loads the whole model, keeps its part (parallelize), opens its own cache of its KV
shard (rank_cache_config), and runs the same engine over the same requests; the ranks agree on
what their tiers served (RanksAgreement) and rank 0 writes the results. At the end the ranks
compare the tokens they generated, so a layout that drifted apart fails loudly instead of
returning one rank's view.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import xxhash

from kvtier.config import KVTierConfig
from kvtier.engine.engine import EngineConfig
from kvtier.engine.request import Request, RequestOutput
from kvtier.parallel.launch import RankContext, launch
from kvtier.parallel.shards import ParallelConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateJob:
    """Requests to run on `model` (a preset, a HF folder or a converted GGUF folder) over `cache`,
    whose layout is the whole model's; every rank derives its own from it."""

    model: str
    requests: tuple[Request, ...]
    cache: KVTierConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    dtype: str | None = None
    seed: int = 0
    persist: bool = False  # write every block to the first durable tier before closing (a later run hits it)


@dataclass(frozen=True, slots=True)
class ParallelRun:
    """What a parallel run returns: rank 0's outputs, and each rank's tier counters (by tier kind)."""

    outputs: list[RequestOutput]
    tier_stats: list[dict[str, dict[str, int]]]  # per rank: {"host": TierStats.as_dict(), "disk": ...}


def generate_parallel(job: GenerateJob, parallel: ParallelConfig, *, device: str = "cpu") -> ParallelRun:
    """Every request's output (rank 0's), in order, computed by `parallel.world_size` ranks.

    Under torchrun this process is one rank: rank 0 gets the outputs, the others an empty list, and
    each only its own tier counters.

    Raises:
        RankFailedError: a rank raised or died (the message names it).
    """
    with tempfile.TemporaryDirectory(prefix="kvtier-generate-") as scratch:
        results = os.path.join(scratch, "results")
        local = launch(generate_on_rank, parallel, job, results, device=device)
        outputs = []
        if local in (None, 0):
            with open(f"{results}.json", encoding="utf-8") as f:
                outputs = [RequestOutput(**item) for item in json.load(f)]
        stats = []
        for rank in range(parallel.world_size) if local is None else [local]:
            with open(f"{results}.rank{rank}.json", encoding="utf-8") as f:
                stats.append(json.load(f))
        return ParallelRun(outputs, stats)


def generate_on_rank(ctx: RankContext, job: GenerateJob, results_path: str) -> None:
    """One rank's part of `generate_parallel`: rank 0 writes the outputs to `RESULTS_PATH.json`, every
    rank its tier counters to `RESULTS_PATH.rankR.json` (its own tiers', then those it read other
    layouts' objects through)."""
    from dataclasses import asdict

    from kvtier.cache import TieredKVCache
    from kvtier.engine.engine import LLMEngine
    from kvtier.model.load import load_model
    from kvtier.parallel.agree import RanksAgreement
    from kvtier.parallel.rank_cache import other_layout_tiers, rank_cache_config
    from kvtier.parallel.transform import parallelize

    model = load_model(job.model, dtype=job.dtype, device=ctx.device, seed=job.seed)
    shard = parallelize(model, ctx.parallel, ctx.rank, ctx.tp_group)
    layout = model.kv_layout(job.cache.layout.block_size, job.cache.layout.dtype)
    cache = TieredKVCache.from_config(rank_cache_config(job.cache, layout, shard.kv_replica), RanksAgreement(),
                                      other_layout_tiers(job.cache, layout, shard.kv_replica))
    try:
        outputs = LLMEngine(model, cache, job.engine).generate(job.requests)
        if job.persist:
            cache.persist()
    finally:
        cache.close()
    check_ranks_agree([o.token_ids for o in outputs])
    with open(f"{results_path}.rank{ctx.rank}.json", "w", encoding="utf-8") as f:
        json.dump({tier.kind.value: tier.stats.as_dict() for tier in cache.tiers}
                  | {f"other_layouts_{tier.kind.value}": tier.stats.as_dict() for tier in cache.read_tiers}, f)
    if ctx.rank == 0:
        with open(f"{results_path}.json", "w", encoding="utf-8") as f:
            json.dump([asdict(o) for o in outputs], f)


def check_ranks_agree(token_ids: Sequence[Sequence[int]]) -> None:
    """Raise RuntimeError unless every rank generated exactly these tokens (one all-reduce of a digest)."""
    digest = xxhash.xxh3_64_intdigest(json.dumps([list(t) for t in token_ids]).encode()) >> 1  # fits int64
    values = torch.tensor([digest, -digest], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    low, high = int(values[0]), -int(values[1])
    if low != high:
        raise RuntimeError(f"the ranks generated different tokens (digests {low:#x} .. {high:#x}); "
                           "their decisions drifted apart")


