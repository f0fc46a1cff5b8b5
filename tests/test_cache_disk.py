"""End to end through the block manager: a working set four times the device pool cycles through
host and disk, and every block that comes back is bit-identical to what went down."""
import pytest
import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.synthetic import run_prefill
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.host import HostStore
from kvtier.types import TierKind
from tests.pool_devices import POOL_DEVICES

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)
NS = namespace_digest("m", None)
NUM_DEVICE_BLOCKS = 8


def prompts():
    # 8 prompts x 4 full blocks (+1 token) = 32 distinct blocks = 4x the device pool
    return [list(range(p * 1000, p * 1000 + 17)) for p in range(8)]


def replay(cache, rounds):
    verified = 0
    for r in range(rounds):
        order = list(enumerate(prompts()))
        for p, tokens in (order if r % 2 == 0 else order[::-1]):  # reversed: recent evictions hit in host
            seq_id = f"r{r}p{p}"
            verified += run_prefill(cache, cache.allocate(seq_id, tokens, NS))
            cache.free(seq_id)
        cache.flush()
    return verified


@pytest.mark.parametrize("device", POOL_DEVICES)
def test_working_set_four_times_device_cycles_through_host_and_disk(tmp_path, device):
    disk = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=False))
    cache = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [HostStore(LAYOUT, 8), disk], device)
    verified = replay(cache, rounds=3)
    assert cache.stats.hit_blocks[TierKind.DISK] > 0 and cache.stats.hit_blocks[TierKind.HOST] > 0
    assert verified == 2 * 8 * 4  # rounds 2 and 3 hit every full block of every prompt
    assert disk.stats.corrupt == 0 and cache.stats.dropped_blocks == 0
    cache.close()


def written_folder(path, fsync):
    """A folder holding every block of one replay, written through by a cache that is then closed."""
    config = DiskTierConfig(path=str(path), capacity_bytes=1 << 20, fsync=fsync)
    first = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [], write_through=[DiskStore(LAYOUT, config)])
    replay(first, rounds=1)
    first.close()
    return config


def test_warm_restart_serves_blocks_written_by_an_earlier_process(tmp_path):
    config = written_folder(tmp_path, fsync=True)
    again = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [DiskStore(LAYOUT, config)])
    assert replay(again, rounds=1) == 8 * 4
    assert again.stats.hit_blocks[TierKind.DISK] == 8 * 4
    again.close()


def test_corrupted_object_is_a_miss_and_recomputed_never_served(tmp_path):
    config = written_folder(tmp_path, fsync=False)
    for path in sorted(tmp_path.rglob("*.kvb"))[::3]:  # flip one payload byte in every third object
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x40
        path.write_bytes(bytes(raw))
    disk = DiskStore(LAYOUT, config)
    again = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [disk])
    verified = replay(again, rounds=1)  # asserts every served block is bit-identical
    assert disk.stats.corrupt > 0 and verified < 8 * 4
    again.close()


def test_persist_writes_what_only_memory_holds_so_a_restart_finds_every_block(tmp_path):
    config = DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=True)
    first = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [HostStore(LAYOUT, 8), DiskStore(LAYOUT, config)])
    replay(first, rounds=1)  # 32 blocks: the last few stay on the device, 8 in host RAM, the rest on disk
    in_memory = first.manager.allocator.cached.keys() | {k.block_hash for k, _ in first.tiers[0].entries()}
    assert len(in_memory) >= 12 and not any(first.tiers[1].contains(h) for h in in_memory)
    assert first.persist() == len(in_memory)
    assert first.persist() == 0  # nothing left that only memory holds
    first.close()
    again = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [DiskStore(LAYOUT, config)])
    assert replay(again, rounds=1) == 8 * 4  # every full block served from disk, checked bit-identical
    assert again.stats.hit_blocks[TierKind.DISK] == 32
    again.close()


def test_persist_without_a_durable_tier_writes_nothing():
    cache = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [HostStore(LAYOUT, 8)])
    replay(cache, rounds=1)
    assert cache.persist() == 0
    cache.close()


def test_a_block_the_pinned_host_tier_cannot_take_goes_to_the_disk_instead(tmp_path):
    host = HostStore(LAYOUT, 1)
    disk = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=False))
    cache = TieredKVCache(LAYOUT, 3, [host, disk])
    first = cache.allocate("a", list(range(5)), NS)  # one full block
    run_prefill(cache, first)
    cache.free("a")
    run_prefill(cache, cache.allocate("b", list(range(100, 109)), NS))  # every device block: a's goes to the host
    cache.free("b")
    (held,) = [h for h in first.block_hashes if host.contains(h)]
    host.pin(held)  # a transfer reading it: the host's one slot cannot be reused
    run_prefill(cache, cache.allocate("c", list(range(200, 209)), NS))  # evicts b's two blocks: no host slot
    cache.free("c")
    cache.flush()
    host.unpin(held)
    assert cache.stats.dropped_blocks == 0 and disk.num_blocks >= 1
    seq = cache.allocate("b2", list(range(100, 109)), NS)
    assert seq.num_cached_tokens == 8 and run_prefill(cache, seq) == 2  # b's blocks came back from the disk, whole
    assert cache.stats.hit_blocks[TierKind.DISK] == 2
