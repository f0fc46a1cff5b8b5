"""Cost per block of hash + lookup + allocate + register + free for one 32k-token prompt.

Run: .venv/bin/python -m pytest benches/bench_alloc.py --benchmark-only
Cold: nothing cached (a fresh pool). Warm: the whole prefix cached, every block but the last a hit.
"""
import pytest

from kvtier.block.hashing import namespace_digest
from kvtier.block.manager import BlockManager

NUM_TOKENS, BLOCK_SIZE = 32768, 16
NUM_BLOCKS = NUM_TOKENS // BLOCK_SIZE
TOKENS = list(range(1000, 1000 + NUM_TOKENS))
NS = namespace_digest("bench-model", "tenant")


def one_request(manager: BlockManager) -> int:
    seq = manager.allocate("r", TOKENS, NS)  # hash + lookup + allocate
    manager.mark_computed("r", NUM_TOKENS)  # register the new full blocks
    manager.free("r")
    return seq.num_cached_tokens


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_alloc_cycle_32k(benchmark, state):
    def setup():
        manager = BlockManager(NUM_BLOCKS + 64, BLOCK_SIZE)
        if state == "warm":
            one_request(manager)
        return (manager,), {}

    cached = benchmark.pedantic(one_request, setup=setup, rounds=30, iterations=1, warmup_rounds=2)
    assert cached == (0 if state == "cold" else NUM_TOKENS - BLOCK_SIZE)
    benchmark.extra_info["us_per_block"] = benchmark.stats.stats.median / NUM_BLOCKS * 1e6
    benchmark.extra_info["num_blocks"] = NUM_BLOCKS
