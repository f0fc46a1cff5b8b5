"""Cost per block of hash + lookup + allocate + register + free for one 32k-token prompt.

Run: .venv/bin/python -m pytest benches/bench_alloc.py --benchmark-only
Cold: a prompt never seen before, on a long-lived pool full of other cached blocks (so every
allocation also evicts one). Warm: the whole prefix cached, every block but the last a hit.
"""
import itertools

import pytest

from kvtier.block.hashing import namespace_digest
from kvtier.block.manager import BlockManager

NUM_TOKENS, BLOCK_SIZE = 32768, 16
NUM_BLOCKS = NUM_TOKENS // BLOCK_SIZE
NS = namespace_digest("bench-model", "tenant")


def one_request(manager: BlockManager, tokens: list[int]) -> int:
    seq = manager.allocate("r", tokens, NS)  # hash + lookup + allocate (+ evict)
    manager.mark_computed("r", NUM_TOKENS)  # register the new full blocks
    manager.free("r")
    return seq.num_cached_tokens


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_alloc_cycle_32k(benchmark, state):
    manager = BlockManager(NUM_BLOCKS + 64, BLOCK_SIZE)
    fresh = itertools.count()
    one_request(manager, list(range(NUM_TOKENS)))  # the pool now holds a cached prompt

    def setup():
        start = 0 if state == "warm" else (next(fresh) + 1) * NUM_TOKENS
        return (manager, list(range(start, start + NUM_TOKENS))), {}

    cached = benchmark.pedantic(one_request, setup=setup, rounds=100, iterations=1, warmup_rounds=3)
    assert cached == (0 if state == "cold" else NUM_TOKENS - BLOCK_SIZE)
    if state == "cold":
        assert manager.allocator.num_evicted >= 100 * NUM_BLOCKS  # every cold round evicted a prompt
    benchmark.extra_info["us_per_block_median"] = benchmark.stats.stats.median / NUM_BLOCKS * 1e6
    benchmark.extra_info["num_blocks"] = NUM_BLOCKS
