import pytest

from kvtier.block.allocator import BlockAllocator
from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.errors import OutOfBlocksError

NS = namespace_digest("m", None)
H = hash_blocks(NS, list(range(80)), 16)  # 5 distinct block hashes


def test_allocate_sets_refcount_and_takes_from_head():
    alloc = BlockAllocator(5)
    blocks = alloc.allocate(3)
    assert [b.block_id for b in blocks] == [0, 1, 2]
    assert [b.ref_cnt for b in blocks] == [1, 1, 1] and alloc.num_free_blocks == 2


def test_out_of_blocks_message_has_numbers_and_remedy():
    alloc = BlockAllocator(5)
    alloc.allocate(4)
    with pytest.raises(OutOfBlocksError, match=r"need 2 device blocks, 1 free or evictable of 5; free "
                                               r"finished sequences, raise num_device_blocks, or add a host tier"):
        alloc.allocate(2)
    assert alloc.num_free_blocks == 1


def test_freed_cached_block_is_found_until_reused_then_evicted_through_hook():
    evicted = []
    alloc = BlockAllocator(2, eviction_hook=lambda blocks: evicted.extend((b.block_id, b.block_hash) for b in blocks))
    (block,) = alloc.allocate(1)
    alloc.cache_blocks([block], H, NS, list(range(16)), 16, 0, 1)
    alloc.free([block])
    assert alloc.get_cached([H[0]]) == [block]
    alloc.allocate(1)  # takes the never-used block 1 first
    assert evicted == [] and alloc.get_cached([H[0]]) == [block]
    alloc.allocate(1)  # only block 0 is left: it is evicted
    assert evicted == [(0, H[0])]
    assert alloc.get_cached([H[0]]) == [] and block.block_hash is None and alloc.num_evicted == 1


def test_touch_takes_free_cached_block_off_the_free_queue():
    alloc = BlockAllocator(3)
    (block,) = alloc.allocate(1)
    alloc.cache_blocks([block], H, NS, [0] * 16, 16, 0, 1)
    alloc.free([block])
    assert alloc.num_free_blocks == 3
    alloc.touch([block])
    assert block.ref_cnt == 1 and alloc.num_free_blocks == 2


def test_get_cached_stops_at_first_miss():
    alloc = BlockAllocator(5)
    blocks = alloc.allocate(3)
    for i in (0, 2):
        alloc.cache_blocks(blocks, H, NS, [i] * 48, 16, i, i + 1)
    assert alloc.get_cached(H[:3]) == [blocks[0]]


def test_cache_block_keeps_the_first_holder_of_a_hash():
    alloc = BlockAllocator(5)
    a, b = alloc.allocate(2)
    assert alloc.cache_blocks([a], H, NS, [0] * 16, 16, 0, 1) == [a]
    assert alloc.cache_blocks([b], H, NS, [0] * 16, 16, 0, 1) == [a]
    assert b.block_hash is None and a.token_ids(16) == (0,) * 16


def test_double_free_raises_and_changes_nothing():
    alloc = BlockAllocator(5)
    a, b = alloc.allocate(2)
    alloc.free([b])
    with pytest.raises(RuntimeError, match=r"double free: Block\(id=1, ref_cnt=0"):
        alloc.free([a, b])
    assert a.ref_cnt == 1 and alloc.num_free_blocks == 4


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "5"])
def test_bad_pool_size_raises_value_error(bad):
    with pytest.raises(ValueError, match="BlockAllocator.num_blocks must be"):
        BlockAllocator(bad)


@pytest.mark.parametrize("bad", [-1, 5, 1.0, None])
def test_unknown_block_id_raises(bad):
    with pytest.raises(ValueError, match=r"unknown block id .*: this pool has ids 0..4"):
        BlockAllocator(5).block(bad)


def _cached(alloc, n):
    """`n` blocks registered under H[0..n) and freed (LRU order: H[0] first in line)."""
    blocks = alloc.allocate(n)
    alloc.cache_blocks(blocks, H, NS, list(range(16 * n)), 16, 0, n)
    alloc.free(blocks)
    return blocks


def test_an_empty_block_freed_after_cached_ones_is_still_reused_before_them():
    evicted = []
    alloc = BlockAllocator(3, eviction_hook=lambda blocks: evicted.extend(b.block_id for b in blocks))
    _cached(alloc, 2)
    (empty,) = alloc.allocate(1)
    alloc.free([empty])  # freed last, never registered
    assert [b.block_id for b in alloc.allocate(1)] == [empty.block_id] and evicted == []
    assert [b.block_id for b in alloc.free_queue] == [0, 1]  # the order blocks are reused in


def test_blocks_freed_evict_first_are_the_first_cached_blocks_evicted():
    evicted = []
    alloc = BlockAllocator(4, eviction_hook=lambda blocks: evicted.extend(b.block_id for b in blocks))
    _cached(alloc, 2)  # blocks 0 and 1
    late = alloc.allocate(2)  # blocks 2 and 3
    alloc.cache_blocks(late, H[2:4], NS, list(range(32)), 16, 0, 2)
    alloc.free(late, evict_first=True)
    alloc.allocate(3)
    assert evicted == [2, 3, 0]  # before the older blocks 0 and 1, in the order given
    assert alloc.get_cached([H[0], H[1]]) == [] and alloc.get_cached([H[1]]) == [alloc.blocks[1]]


def test_blocks_are_made_as_first_handed_out_and_all_for_a_lookup_by_id():
    alloc = BlockAllocator(1 << 20)
    assert alloc.blocks == [] and alloc.num_free_blocks == 1 << 20
    first = alloc.allocate(3)
    assert [b.block_id for b in first] == [0, 1, 2] and len(alloc.blocks) == 3
    alloc.free(first[:1])  # an empty block freed: reused before any never-used one
    assert [b.block_id for b in alloc.allocate(2)] == [0, 3]
    assert alloc.num_free_blocks == (1 << 20) - 4
    small = BlockAllocator(6)
    assert small.block(4).block_id == 4 and len(small.blocks) == 6 and small.num_free_blocks == 6
    assert [b.block_id for b in small.allocate(6)] == list(range(6))
