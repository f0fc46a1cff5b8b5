"""The demo: replay a synthetic multi-turn chat trace through a tiered cache and report hit rates.

Every block served from any tier is compared with the content it was written with, so the demo
also shows that what comes back up is bit-identical to what went down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.synthetic import chat_trace, run_prefill
from kvtier.tiers.base import TierStore
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.host import HostStore
from kvtier.types import SeqId, TierKind


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    layout: KVLayout
    num_device_blocks: int = 64
    num_host_blocks: int = 48
    disk_path: str | None = None  # a disk tier below the host when given
    disk_capacity_bytes: int = 256 << 20
    num_conversations: int = 12
    num_turns: int = 4


def replay(cache: TieredKVCache, config: DemoConfig) -> dict[str, Any]:
    """Run every turn of the trace; returns token counts and the number of blocks verified."""
    namespace = namespace_digest("kvtier-demo-model", None)
    prompt_tokens = cached_tokens = verified = 0
    for turn in chat_trace(config.num_conversations, config.num_turns):
        seq_id = SeqId(f"c{turn.conversation}t{turn.turn}")
        seq = cache.allocate(seq_id, turn.prompt, namespace)
        verified += run_prefill(cache, seq)
        prompt_tokens += len(turn.prompt)
        cached_tokens += seq.num_cached_tokens
        cache.free(seq_id)
    return {"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens, "verified_blocks": verified}


def run_demo(config: DemoConfig, lower_tiers: list[TierStore] | None = None) -> dict[str, Any]:
    """Replay the trace with a host tier (and any given lower tiers); returns the report."""
    tiers: list[TierStore] = [HostStore(config.layout, config.num_host_blocks)]
    if config.disk_path is not None:
        tiers.append(DiskStore(config.layout, DiskTierConfig(path=config.disk_path, fsync=False,
                                                             capacity_bytes=config.disk_capacity_bytes)))
    tiers += list(lower_tiers or [])
    cache = TieredKVCache(config.layout, config.num_device_blocks, tiers)
    try:
        totals = replay(cache, config)
        cache.flush()
    finally:
        cache.close()
    stats = cache.stats
    return {
        **totals,
        "token_hit_rate": totals["cached_tokens"] / max(totals["prompt_tokens"], 1),
        "lookup_blocks": stats.lookup_blocks,
        "miss_blocks": stats.miss_blocks,
        "hit_rate": {kind.value: stats.hit_rate(kind) for kind in TierKind if kind in
                     {TierKind.DEVICE, *(t.kind for t in tiers)}},
        "offloaded_blocks": stats.offloaded_blocks,
        "dropped_blocks": stats.dropped_blocks,
        "onloaded_bytes": stats.onloaded_bytes,
        "offloaded_bytes": stats.offloaded_bytes,
        "transfer_latency": cache.engine.stats(),
        "tiers": {t.kind.value: {**t.stats.as_dict(), "used_bytes": t.used_bytes,
                                 "capacity_bytes": t.capacity_bytes} for t in tiers},
    }
