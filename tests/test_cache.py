import threading

import pytest
import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import KVLayout
from kvtier.synthetic import check_served_blocks, run_prefill
from kvtier.tiers.base import BlockKey
from kvtier.tiers.host import HostStore
from kvtier.types import TierKind
from tests.pool_devices import POOL_DEVICES

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype=torch.bfloat16)
NS = namespace_digest("m", None)


def run_prompt(cache, seq_id, tokens, ns=NS):
    seq = cache.allocate(seq_id, tokens, ns)
    run_prefill(cache, seq)  # checks that what came back equals what went down
    cache.free(seq_id)
    return seq


def evicted_to(host, device="cpu"):
    """A 4-block device pool over `host` in which prompt "a" (`range(13)`: 3 full blocks) was run,
    then evicted to `host` by prompt "b"."""
    cache = TieredKVCache(LAYOUT, 4, [host], device)
    run_prompt(cache, "a", list(range(13)))
    run_prompt(cache, "b", list(range(100, 116)))
    return cache


@pytest.mark.parametrize("device", POOL_DEVICES)
def test_evicted_prefix_comes_back_from_host_bit_identical(device):
    cache = TieredKVCache(LAYOUT, 4, [HostStore(LAYOUT, 8)], device)
    prompt = list(range(13))  # 3 full blocks + 1 token
    run_prompt(cache, "a", prompt)
    run_prompt(cache, "b", list(range(100, 116)))  # evicts a's blocks to host
    assert cache.stats.offloaded_blocks >= 3
    seq = run_prompt(cache, "c", prompt)
    assert seq.num_cached_tokens == 12
    assert cache.stats.hit_blocks[TierKind.HOST] + cache.stats.hit_blocks[TierKind.DEVICE] == 3
    assert cache.stats.hit_blocks[TierKind.HOST] >= 1


def test_a_block_read_back_and_evicted_again_is_not_written_again():
    host = HostStore(LAYOUT, 8)
    cache = TieredKVCache(LAYOUT, 4, [host])
    prompt = list(range(13))
    run_prompt(cache, "a", prompt)
    run_prompt(cache, "b", list(range(100, 116)))  # a's 3 full blocks go to host
    first = cache.stats.offloaded_blocks
    assert run_prompt(cache, "c", prompt).num_cached_tokens == 12  # back up from host
    run_prompt(cache, "d", list(range(200, 216)))  # evicts them again: host holds their bytes already
    assert cache.stats.offloaded_blocks - first == 4  # only b's blocks, new to the host
    assert run_prompt(cache, "e", prompt).num_cached_tokens == 12


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
    cache.flush()  # host -> second spills are asynchronous
    assert host.num_blocks == 2 and second.num_blocks >= 2
    seq = run_prompt(cache, "again", list(range(16)) + [1])
    assert seq.num_cached_tokens == 16


@pytest.mark.parametrize("device", POOL_DEVICES)
def test_onload_runs_in_background_until_finish_onload(device):
    cache = evicted_to(HostStore(LAYOUT, 8), device)  # a's blocks now live in the host tier only
    seq = cache.allocate("c", list(range(13)), NS, wait=False)
    assert cache.is_onloading("c") and seq.num_cached_tokens < 12
    with pytest.raises(RuntimeError, match="has an onload in flight; call finish_onload first"):
        cache.mark_computed("c", 13)
    cache.finish_onload("c")
    assert seq.num_cached_tokens == 12 and not cache.is_onloading("c")
    assert check_served_blocks(cache, seq) == 3


def test_free_during_onload_cancels_and_unpins():
    host = HostStore(LAYOUT, 8)
    cache = evicted_to(host)
    seq = cache.allocate("c", list(range(13)), NS, wait=False)
    cache.free("c")
    cache.flush()
    for block_hash in seq.block_hashes[:3]:
        if host.contains(block_hash):
            assert host.evict(block_hash)  # raises if a pin leaked


def test_write_through_tier_gets_every_computed_block():
    shared = HostStore(LAYOUT, 8)
    cache = TieredKVCache(LAYOUT, 4, [], write_through=[shared])
    seq = run_prompt(cache, "a", list(range(13)))
    cache.flush()
    assert all(shared.contains(h) for h in seq.block_hashes[:3]) and shared.num_blocks == 3


def test_block_whose_spill_has_not_landed_still_hits():
    from tests.transfer.test_engine import GatedStore

    host, slow = HostStore(LAYOUT, 2), GatedStore(LAYOUT, 8)
    cache = TieredKVCache(LAYOUT, 4, [host, slow])
    slow.gate.clear()  # host evictions queue up as spills to `slow`
    run_prompt(cache, "a", list(range(13)))
    run_prompt(cache, "b", list(range(100, 116)))
    seq = run_prompt(cache, "c", list(range(13)))  # asserts what comes back equals what went down
    assert seq.num_cached_tokens == 12 and slow.num_blocks == 0
    assert cache.stats.hit_blocks[TierKind.HOST] >= 1  # GatedStore is a HostStore: its kind is HOST
    slow.gate.set()
    cache.close()


def test_a_tier_of_another_layout_is_refused_at_construction():
    other = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"head_dim.*4.*8|8.*4.*head_dim") as refused:
        TieredKVCache(LAYOUT, 8, [HostStore(LAYOUT, 4), HostStore(other, 4)])
    assert "tier 1" in str(refused.value) and "HostStore" in str(refused.value)
    with pytest.raises(ValueError, match="write_through"):
        TieredKVCache(LAYOUT, 8, [HostStore(LAYOUT, 4)], write_through=[HostStore(other, 4)])


class _HeldHost(HostStore):
    """A host tier whose reads, once `held` is set, start then wait for `release`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held, self.started, self.release = False, threading.Event(), threading.Event()

    def get(self, key, out=None):
        if self.held:
            self.started.set()
            self.release.wait()
        return super().get(key, out)


def test_on_cpu_blocks_are_read_into_the_pool_pages_themselves():
    cache = evicted_to(HostStore(LAYOUT, 8))
    seq = cache.allocate("c", list(range(13)), NS, wait=False)
    pages = cache._onloads["c"].landing
    assert [p.data_ptr() for p in pages] == [cache.pool.kv_cache[i].data_ptr() for i in seq.block_ids[:3]]
    cache.finish_onload("c")
    assert seq.num_cached_tokens == 12 and check_served_blocks(cache, seq) == 3


def test_free_waits_for_a_running_read_into_the_pool_pages():
    host = _HeldHost(LAYOUT, 8)
    cache = evicted_to(host)
    host.held = True
    cache.allocate("c", list(range(13)), NS, wait=False)
    handle = cache._onloads["c"]
    assert host.started.wait(30)
    threading.Timer(0.2, host.release.set).start()  # NOTE: free must not return before this read ends
    cache.free("c")
    assert handle.done(), "free returned while a read could still write into the freed blocks"


@pytest.mark.parametrize("device", POOL_DEVICES)
def test_a_device_block_after_a_lower_tier_hit_is_served_too(device):
    """Block 0 of a prompt left the device, blocks 1 and 2 did not: all three are hits, 1 and 2 copied
    from the pool itself (before, the lookup stopped at block 1: neither a device prefix nor below)."""
    cache = TieredKVCache(LAYOUT, 6, [HostStore(LAYOUT, 8)], device)
    prompt = list(range(13))
    first = run_prompt(cache, "a", prompt)
    allocator = cache.manager.allocator
    kept = [allocator.cached[h] for h in first.block_hashes[1:3]]
    allocator.touch(kept)  # blocks 1 and 2 stay; the next prompt's allocation evicts block 0
    run_prompt(cache, "b", list(range(100, 113)))
    allocator.free(kept)
    assert first.block_hashes[0] not in allocator.cached and all(h in allocator.cached for h in first.block_hashes[1:3])
    seq = run_prompt(cache, "c", prompt)  # run_prefill checks every served block bit for bit
    assert seq.num_cached_tokens == 12
    assert cache.stats.hit_blocks[TierKind.HOST] == 1 and cache.stats.hit_blocks[TierKind.DEVICE] == 2


def test_a_prefix_lookup_pins_each_block_in_the_first_tier_holding_it_and_finds_what_only_the_folder_knows(tmp_path):
    """One look-up of the whole range per tier index: a block in the host and on disk is the host's;
    a block no index knows (another engine's object in a shared folder) is still found, by asking."""
    from kvtier.config import SharedTierConfig
    from kvtier.synthetic import block_content
    from kvtier.tiers.disk import DiskStore

    def shared() -> DiskStore:
        return DiskStore(LAYOUT, SharedTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=False))

    writer_cache = TieredKVCache(LAYOUT, 8, [], write_through=[shared()])
    prompt = list(range(17))
    hashes = run_prompt(writer_cache, "a", prompt).block_hashes[:4]
    writer_cache.close()

    def key(i: int) -> BlockKey:
        return BlockKey(NS, hashes[i], tuple(prompt[i * 4:(i + 1) * 4]))

    host, disk = HostStore(LAYOUT, 4), shared()  # NOTE: opened after the writes, yet its index is warm...
    for h in hashes[1::2]:
        disk.evict(h)  # ...so drop two: another engine writes them again below, behind this store's back
    other = shared()
    for i in (1, 3):
        other.put(key(i), block_content(LAYOUT, hashes[i]))
    host.put(key(2), block_content(LAYOUT, hashes[2]))  # on disk and in the host
    cache = TieredKVCache(LAYOUT, 4, [host, disk])
    whole = torch.zeros((4, *LAYOUT.block_shape), dtype=LAYOUT.dtype)
    found = cache._find_lower(NS, prompt, hashes, 0, 4)
    assert [hit.tier for hit in found] == [disk, disk, host, disk]
    assert host._pins.get(hashes[2]) == 1 and not disk.is_pinned(hashes[2])
    for hit in found:
        hit.tier.unpin(hit.key.block_hash)
    assert cache.read_into(NS, prompt, hashes, whole.unbind(0)) == 4
    assert all(torch.equal(whole[i], block_content(LAYOUT, h)) for i, h in enumerate(hashes))
    assert not host._pins and not any(disk.is_pinned(h) for h in hashes)

    def fails(key):
        raise OSError("injected: the folder went away")

    disk.evict(hashes[3])
    other.put(key(3), block_content(LAYOUT, hashes[3]))  # again behind its back: asked for one by one...
    cache._pin_in_tier = fails  # ...after the blocks before it were pinned, and that fails
    with pytest.raises(OSError, match="injected"):
        cache._find_lower(NS, prompt, hashes, 0, 4)
    assert not host._pins and not any(disk.is_pinned(h) for h in hashes)  # every pin taken was released
    cache.close()


def test_a_planned_read_serves_a_disk_prefix_and_only_where_one_tier_can_plan_it_all(tmp_path):
    from kvtier.config import DiskTierConfig
    from kvtier.parallel.agree import Agreement
    from kvtier.synthetic import block_content
    from kvtier.tiers.disk import DiskStore

    def spilled(lower, agreement=None):
        cache = TieredKVCache(LAYOUT, 4, lower, agreement=agreement)
        seq = run_prompt(cache, "a", list(range(13)))  # 3 full blocks
        run_prompt(cache, "b", list(range(100, 116)))  # evicts them
        cache.flush()
        return cache, seq.block_hashes[:3]

    disk = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path / "d"), capacity_bytes=1 << 20, fsync=False))
    cache, hashes = spilled([disk])
    plan = cache.plan_read(NS, list(range(13)), hashes)
    assert plan is not None and plan.tier is disk
    outs = torch.zeros((3, *LAYOUT.block_shape), dtype=LAYOUT.dtype)
    hits = cache.stats.hit_blocks[TierKind.DISK]
    assert cache.read_planned(plan, outs) and cache.stats.hit_blocks[TierKind.DISK] == hits + 3
    assert all(torch.equal(outs[i], block_content(LAYOUT, h)) for i, h in enumerate(hashes))
    assert cache.plan_read(NS, list(range(13)), [*hashes[:2], bytes(32)]) is None  # one it does not hold
    other = cache.plan_read(NS, [*range(5), 99, *range(6, 13)], hashes)  # their hashes, other token ids: never served
    assert other is not None and not cache.read_planned(other, outs)
    assert cache.stats.hit_blocks[TierKind.DISK] == hits + 3
    cache.close()
    host_cache, host_hashes = spilled([HostStore(LAYOUT, 8)])
    assert host_cache.plan_read(NS, list(range(13)), host_hashes) is None  # the host tier does not plan
    host_cache.close()

    class Ranks(Agreement):  # as under tensor parallelism: every rank must make the same calls
        pass

    disk2 = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path / "e"), capacity_bytes=1 << 20, fsync=False))
    ranked, ranked_hashes = spilled([disk2], Ranks())
    assert ranked.plan_read(NS, list(range(13)), ranked_hashes) is None
    ranked.close()


def test_read_into_serves_a_prefix_from_its_tiers_into_strided_buffers_taking_no_device_block(tmp_path):
    from kvtier.config import DiskTierConfig
    from kvtier.synthetic import block_content
    from kvtier.tiers.disk import DiskStore

    disk = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=False))
    host = HostStore(LAYOUT, 1)
    cache = TieredKVCache(LAYOUT, 4, [host, disk])
    prompt = list(range(13))
    seq = run_prompt(cache, "a", prompt)  # 3 full blocks
    run_prompt(cache, "b", list(range(100, 116)))  # evicts them: the host keeps one, the disk the rest
    cache.flush()
    hashes = seq.block_hashes[:3]
    whole = torch.zeros((*LAYOUT.block_shape[:3], 3, *LAYOUT.block_shape[3:]), dtype=LAYOUT.dtype)
    outs = whole.unbind(3)  # a strided block view each
    evicted, cached = cache.manager.allocator.num_evicted, dict(cache.manager.allocator.cached)
    assert cache.read_into(NS, prompt, hashes, outs) == 3
    assert all(torch.equal(out, block_content(LAYOUT, h)) for out, h in zip(outs, hashes))
    assert cache.manager.allocator.num_evicted == evicted and cache.manager.allocator.cached == cached
    assert cache.stats.hit_blocks[TierKind.DISK] >= 1 and cache.stats.hit_blocks[TierKind.HOST] >= 1
    assert not any(disk.is_pinned(h) or host._pins.get(h) for h in hashes)
    held = [h for h in hashes if disk.contains(h) and not host.contains(h)]
    disk.evict(held[0])  # a block in no tier ends the run there, its pins released
    assert cache.read_into(NS, prompt, hashes, outs) == hashes.index(held[0])
    assert not any(disk.is_pinned(h) or host._pins.get(h) for h in hashes)
    cache.close()
