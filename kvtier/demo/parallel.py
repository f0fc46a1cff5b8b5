"""`kvtier demo --tp N [--pp M]`: the same demo with the model split over ranks (kvtier/parallel).

Every rank plays the whole demo on its part of the model and its shard of every block (its own
tiers, agreeing with the other ranks on what they served); rank 0's report is the demo's, and the
ranks check that they generated the same replies.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from kvtier.config import KVTierConfig
from kvtier.demo.run import DemoSettings
from kvtier.parallel.launch import RankContext, launch
from kvtier.parallel.shards import ParallelConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoJob:
    model: str  # a preset or a model folder (a GGUF already converted by the caller)
    dtype: str | None
    settings: DemoSettings
    cache: KVTierConfig  # the whole model's; each rank derives its own


def run_demo_parallel(job: DemoJob, parallel: ParallelConfig, device: str = "cpu") -> dict[str, Any]:
    """Rank 0's demo report, run on `parallel.world_size` ranks (RankFailedError if one died)."""
    with tempfile.TemporaryDirectory(prefix="kvtier-demo-ranks-") as scratch:
        path = os.path.join(scratch, "report.json")
        launch(demo_on_rank, parallel, job, path, device=device)
        with open(path, encoding="utf-8") as f:
            report: dict[str, Any] = json.load(f)
    report["parallel"] = {"tp": parallel.tp_size, "pp": parallel.pp_size}
    return report


def demo_on_rank(ctx: RankContext, job: DemoJob, report_path: str) -> None:
    from kvtier.cache import TieredKVCache
    from kvtier.demo.chat import ChatTokens
    from kvtier.demo.run import run_demo
    from kvtier.model.load import load_model, load_tokenizer
    from kvtier.parallel.agree import RanksAgreement
    from kvtier.parallel.rank_cache import other_layout_tiers, rank_cache_config
    from kvtier.parallel.serve import check_ranks_agree
    from kvtier.parallel.transform import parallelize

    model = load_model(job.model, dtype=job.dtype, device=ctx.device)
    chat = ChatTokens(load_tokenizer(job.model), model.config.vocab_size, model.config.eos_token_ids,
                      job.settings.document_tokens)
    shard = parallelize(model, ctx.parallel, ctx.rank, ctx.tp_group)
    layout = model.kv_layout(job.cache.layout.block_size, job.cache.layout.dtype)
    config = rank_cache_config(job.cache, layout, shard.kv_replica)

    def open_cache(config: KVTierConfig) -> TieredKVCache:
        return TieredKVCache.from_config(config, RanksAgreement(), other_layout_tiers(job.cache, layout,
                                                                                      shard.kv_replica))

    def progress(line: str) -> None:
        if ctx.rank == 0:
            print(f"kvtier demo: {line}", file=sys.stderr, flush=True)

    report = run_demo(model, chat, config, job.settings, progress, open_cache)
    check_ranks_agree([turn["reply_token_ids"] for turn in report["turns"]])
    if ctx.rank == 0:
        with open(report_path, "w", encoding="utf-8") as f:
            json.dump(report, f)
