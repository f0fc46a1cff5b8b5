import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import KVLayout
from kvtier.tiers.host import HostStore
from kvtier.types import TierKind
from kvtier.synthetic import block_content, compute_blocks

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype=torch.bfloat16)
NS = namespace_digest("m", None)


def run_prompt(cache, seq_id, tokens, ns=NS):
    seq = cache.allocate(seq_id, tokens, ns)
    cached_blocks = seq.num_cached_tokens // LAYOUT.block_size
    for i, block_id in enumerate(seq.block_ids[:cached_blocks]):  # what came back equals what went down
        assert torch.equal(cache.pool.read_blocks([block_id])[0], block_content(LAYOUT, seq.block_hashes[i]))
    compute_blocks(cache, seq, cached_blocks, len(tokens) // LAYOUT.block_size)
    cache.mark_computed(seq_id, len(tokens))
    cache.free(seq_id)
    return seq


def test_evicted_prefix_comes_back_from_host_bit_identical():
    cache = TieredKVCache(LAYOUT, 4, [HostStore(LAYOUT, 8)])
    prompt = list(range(13))  # 3 full blocks + 1 token
    run_prompt(cache, "a", prompt)
    run_prompt(cache, "b", list(range(100, 116)))  # evicts a's blocks to host
    assert cache.stats.offloaded_blocks >= 3
    seq = run_prompt(cache, "c", prompt)
    assert seq.num_cached_tokens == 12
    assert cache.stats.hit_blocks[TierKind.HOST] + cache.stats.hit_blocks[TierKind.DEVICE] == 3
    assert cache.stats.hit_blocks[TierKind.HOST] >= 1


def test_without_lower_tier_evicted_blocks_are_dropped_and_recomputed():
    cache = TieredKVCache(LAYOUT, 4)
    run_prompt(cache, "a", list(range(13)))
    run_prompt(cache, "b", list(range(100, 116)))
    seq = run_prompt(cache, "c", list(range(13)))
    assert seq.num_cached_tokens == 0 and cache.stats.dropped_blocks >= 3


def test_host_eviction_cascades_to_the_next_tier():
    host, second = HostStore(LAYOUT, 2), HostStore(LAYOUT, 8)
    cache = TieredKVCache(LAYOUT, 6, [host, second])
    for i in range(4):
        run_prompt(cache, f"p{i}", list(range(i * 100, i * 100 + 16)))
    assert host.num_blocks == 2 and second.num_blocks >= 2
    seq = run_prompt(cache, "again", list(range(16)) + [1])
    assert seq.num_cached_tokens == 16
