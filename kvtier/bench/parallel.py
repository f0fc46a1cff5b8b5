"""`kvtier bench parallel`: one multi-turn chat workload served at TP=1, TP=2, PP=2 and DP=2, side by side.

The workload: `conversations` chats share a system prompt; each turn appends a user message of
`user_tokens` to the history (the previous turns and their greedy replies) and asks for
`reply_tokens` more. Every turn of every chat goes through the engine over the tiered cache
(device pool, host RAM, a disk folder), so a turn's history comes back as prefix hits.

- TP=N and PP=N: one engine whose model is split over N ranks (kvtier/parallel), the turns of all
  chats batched together, round by round. TP=Nr: the same with a replicated LM head.
- DP=2: two independent engine processes, each with the whole model and half the chats, sharing one
  cache folder (a shared tier, written through), so each can find the blocks the other wrote. (They
  are launched as a world of two ranks only to start together and share the clock's barriers.)

Each layout runs in fresh processes with a fresh folder; the clock runs on rank 0 from a barrier
after every rank has loaded its model to a barrier after the last turn. Reported per layout: output
tokens per second over that wall time, TTFT and ITL percentiles, and prompt tokens served from the
cache. Replies must be identical across layouts (greedy, same weights); the bench checks it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # NOTE: torch is imported when a run starts, not when `kvtier --help` lists this bench
    from kvtier.parallel.launch import RankContext

LAYOUTS = ("tp1", "tp2", "pp2", "dp2")
EXTRA_LAYOUTS = ("tp2r",)  # TP=2 with a replicated LM head instead of a vocab-parallel one


@dataclass(frozen=True, slots=True, kw_only=True)
class ParallelBenchConfig:
    model: str = "qwen2.5-0.5b"  # a preset (seeded random weights) or a folder; it must split at TP=2
    dtype: str | None = "float32"
    conversations: int = 4
    turns: int = 3
    system_tokens: int = 128
    user_tokens: int = 32
    reply_tokens: int = 16
    device_blocks: int = 96
    host_blocks: int = 32
    seed: int = 0
    layouts: tuple[str, ...] = LAYOUTS

    def __post_init__(self) -> None:
        for name in ("conversations", "turns", "system_tokens", "user_tokens", "reply_tokens", "device_blocks",
                     "host_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        unknown = sorted(set(self.layouts) - set(LAYOUTS + EXTRA_LAYOUTS))
        if unknown or not self.layouts:
            raise ValueError(f"unknown layouts {unknown}; choose from {list(LAYOUTS + EXTRA_LAYOUTS)}")


@dataclass(slots=True)
class LayoutResult:
    layout: str
    ranks: int
    wall_s: float
    output_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    replies: list[list[int]] = field(default_factory=list)  # per chat, its turns' replies one after another

    def summary(self) -> dict[str, Any]:
        return {"layout": self.layout, "ranks": self.ranks, "wall_s": round(self.wall_s, 3),
                "output_tokens_per_s": round(self.output_tokens / self.wall_s, 2),
                "ttft_p50_ms": _ms(percentile(self.ttft_s, 50)), "ttft_p90_ms": _ms(percentile(self.ttft_s, 90)),
                "itl_p50_ms": _ms(percentile(self.itl_s, 50)), "itl_p90_ms": _ms(percentile(self.itl_s, 90)),
                "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens}


def run_parallel_bench(config: ParallelBenchConfig) -> dict[str, Any]:
    """Every layout's figures, the check that their replies agree, and which served best."""
    results = [run_layout(config, layout) for layout in config.layouts]
    reference = results[0].replies
    mismatched = [r.layout for r in results if r.replies != reference]
    best = max(results, key=lambda r: r.output_tokens / r.wall_s)
    base = next((r for r in results if r.layout == "tp1"), results[0])
    ratio = (best.output_tokens / best.wall_s) / (base.output_tokens / base.wall_s)
    return {"config": dataclasses.asdict(config), "cpu_count": os.cpu_count(),
            "layouts": [r.summary() for r in results], "replies_match": not mismatched,
            "mismatched_layouts": mismatched, "best": best.layout,
            "conclusion": f"{best.layout} served best: {best.output_tokens / best.wall_s:.1f} output tokens/s, "
                          f"{ratio:.2f}x {base.layout}, on {os.cpu_count()} CPU cores"}


def run_layout(config: ParallelBenchConfig, layout: str) -> LayoutResult:
    """One layout's run in fresh processes over a fresh cache folder."""
    from kvtier.parallel.launch import launch
    from kvtier.parallel.shards import ParallelConfig

    kind, size = layout[:2], int(layout[2:].rstrip("r"))
    parallel = ParallelConfig(tp_size=size if kind in ("tp", "dp") else 1, pp_size=size if kind == "pp" else 1,
                              vocab_parallel=not layout.endswith("r"))
    with tempfile.TemporaryDirectory(prefix=f"kvtier-bench-{layout}-") as scratch:
        results = os.path.join(scratch, "result")
        launch(_serve_on_rank, parallel, config, kind == "dp", scratch, results)
        parts = []
        for rank in range(parallel.world_size if kind == "dp" else 1):
            with open(f"{results}.{rank}.json", encoding="utf-8") as f:
                parts.append(json.load(f))
    result = LayoutResult(layout, parallel.world_size, max(p["wall_s"] for p in parts), 0)
    chats: dict[int, list[int]] = {}
    for part in parts:
        result.output_tokens += part["output_tokens"]
        result.ttft_s += part["ttft_s"]
        result.itl_s += part["itl_s"]
        result.prompt_tokens += part["prompt_tokens"]
        result.cached_tokens += part["cached_tokens"]
        chats.update({int(k): v for k, v in part["replies"].items()})
    result.replies = [chats[i] for i in sorted(chats)]
    return result


def _serve_on_rank(ctx: RankContext, config: ParallelBenchConfig, data_parallel: bool, scratch: str,
                   results: str) -> None:
    """Serve the chats this rank's engine owns (all of them, or under DP its half), turn by turn."""
    import torch.distributed as dist

    from kvtier.cache import TieredKVCache
    from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig, SharedTierConfig
    from kvtier.engine.engine import EngineConfig, LLMEngine
    from kvtier.engine.request import Request, RequestOutput
    from kvtier.model.load import load_model
    from kvtier.parallel.agree import Agreement, RanksAgreement
    from kvtier.parallel.rank_cache import rank_cache_config
    from kvtier.parallel.transform import parallelize

    model = load_model(config.model, dtype=config.dtype, seed=config.seed)
    whole = model.config.kv_layout(16)
    folder = os.path.join(scratch, "cache")
    tier: DiskTierConfig | SharedTierConfig = (
        SharedTierConfig(path=folder, capacity_bytes=4 << 30, fsync=False) if data_parallel
        else DiskTierConfig(path=folder, capacity_bytes=4 << 30, fsync=False))
    cache_config = KVTierConfig(layout=whole, device=DeviceTierConfig(num_blocks=config.device_blocks),
                                tiers=(HostTierConfig(num_blocks=config.host_blocks), tier))
    agreement: Agreement = Agreement()
    if not data_parallel:
        parallelize(model, ctx.parallel, ctx.rank, ctx.tp_group)
        cache_config = rank_cache_config(cache_config, model.kv_layout(16))
        agreement = RanksAgreement()
    cache = TieredKVCache.from_config(cache_config, agreement)
    engine = LLMEngine(model, cache, EngineConfig(max_num_seqs=config.conversations,
                                                  max_num_batched_tokens=512))
    rng = random.Random(config.seed)
    system = [rng.randrange(model.config.vocab_size) for _ in range(config.system_tokens)]
    users = [[[rng.randrange(model.config.vocab_size) for _ in range(config.user_tokens)]
              for _ in range(config.turns)] for _ in range(config.conversations)]
    mine = [c for c in range(config.conversations) if not data_parallel or c % ctx.parallel.world_size == ctx.rank]
    histories = {c: list(system) for c in mine}
    replies: dict[int, list[int]] = {c: [] for c in mine}
    outputs: list[RequestOutput] = []
    prompt_tokens = 0
    dist.barrier()
    start = time.perf_counter()
    try:
        for turn in range(config.turns):
            requests = []
            for c in mine:
                histories[c] += users[c][turn]
                prompt_tokens += len(histories[c])
                requests.append(Request(request_id=f"c{c}t{turn}", prompt_token_ids=tuple(histories[c]),
                                        max_tokens=config.reply_tokens))
            for c, output in zip(mine, engine.generate(requests)):
                histories[c] += output.token_ids
                replies[c] += output.token_ids
                outputs.append(output)
        dist.barrier()
        wall = time.perf_counter() - start
    finally:
        cache.close()
    if data_parallel or ctx.rank == 0:
        with open(f"{results}.{ctx.rank if data_parallel else 0}.json", "w", encoding="utf-8") as f:
            json.dump({"wall_s": wall, "output_tokens": sum(len(o.token_ids) for o in outputs),
                       "ttft_s": [o.ttft_s for o in outputs if o.ttft_s is not None],
                       "itl_s": [t for o in outputs for t in o.itl_s],
                       "prompt_tokens": prompt_tokens,
                       "cached_tokens": sum(o.num_cached_tokens for o in outputs), "replies": replies}, f)


def format_table(report: dict[str, Any]) -> str:
    rows = [f"{'layout':<7}{'ranks':>6}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p90':>10}{'ITL p50':>9}{'ITL p90':>9}"
            f"{'cached/prompt':>15}"]
    for r in report["layouts"]:
        rows.append(f"{r['layout']:<7}{r['ranks']:>6}{r['output_tokens_per_s']:>9.1f}{r['ttft_p50_ms']:>8.1f}ms"
                    f"{r['ttft_p90_ms']:>8.1f}ms{r['itl_p50_ms']:>7.1f}ms{r['itl_p90_ms']:>7.1f}ms"
                    f"{r['cached_tokens']:>8}/{r['prompt_tokens']:<6}")
    rows.append(("replies identical across layouts" if report["replies_match"]
                 else f"REPLIES DIFFER in {report['mismatched_layouts']}"))
    rows.append(report["conclusion"])
    return "\n".join(rows)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
