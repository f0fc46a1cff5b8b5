"""Replay a synthetic multi-turn chat trace through a tiered cache and report hit rates.

Every block served from any tier is compared with the content it was written with, so the replay
also shows that what comes back up is bit-identical to what went down (no model runs).
"""
from __future__ import annotations

from typing import Any

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import KVTierConfig
from kvtier.synthetic import chat_trace, run_prefill
from kvtier.types import SeqId, TierKind


def replay(cache: TieredKVCache, num_conversations: int, num_turns: int) -> dict[str, Any]:
    """Run every turn of the trace; returns token counts and the number of blocks verified."""
    namespace = namespace_digest("kvtier-demo-model", None)
    prompt_tokens = cached_tokens = verified = 0
    for turn in chat_trace(num_conversations, num_turns):
        seq_id = SeqId(f"c{turn.conversation}t{turn.turn}")
        seq = cache.allocate(seq_id, turn.prompt, namespace)
        verified += run_prefill(cache, seq)
        prompt_tokens += len(turn.prompt)
        cached_tokens += seq.num_cached_tokens
        cache.free(seq_id)
    return {"prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens, "verified_blocks": verified}


def run_demo(config: KVTierConfig, num_conversations: int = 12, num_turns: int = 4) -> dict[str, Any]:
    """Replay the trace through the cache `config` describes; returns the report."""
    cache = TieredKVCache.from_config(config)
    tiers = cache.tiers
    try:
        totals = replay(cache, num_conversations, num_turns)
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
