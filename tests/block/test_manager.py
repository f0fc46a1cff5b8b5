import pytest

from kvtier.block.hashing import namespace_digest
from kvtier.block.manager import BlockManager
from kvtier.errors import OutOfBlocksError

NS = namespace_digest("m", None)
NS_B = namespace_digest("m", "tenant-b")


def test_prompt_gets_ceil_blocks_and_slots():
    mgr = BlockManager(5, 4)
    seq = mgr.allocate("a", list(range(6)), NS)
    assert seq.block_ids == [0, 1] and seq.num_cached_tokens == 0
    assert mgr.slot_mapping("a", 0, 6) == [0, 1, 2, 3, 4, 5]
    assert mgr.num_free_blocks == 3


def test_repeated_prefix_hits_after_computed_and_freed():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", list(range(10)), NS)
    assert [b.block_id for b in mgr.mark_computed("a", 10)] == [0, 1]
    mgr.free("a")
    seq = mgr.allocate("b", list(range(8)) + [50, 51], NS)
    assert seq.block_ids[:2] == [0, 1] and seq.num_cached_tokens == 8
    assert [b.ref_cnt for b in seq.blocks] == [1, 1, 1]


def test_whole_prompt_cached_still_computes_last_token():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", list(range(8)), NS)
    mgr.mark_computed("a", 8)
    seq = mgr.allocate("b", list(range(8)), NS)
    assert seq.num_cached_tokens == 4  # block 2 holds the last token, which must be recomputed
    assert seq.block_ids[0] == 0 and seq.block_ids[1] != 1


def test_other_tenant_never_hits():
    mgr = BlockManager(8, 4)
    mgr.allocate("a", list(range(9)), NS)
    mgr.mark_computed("a", 9)
    seq = mgr.allocate("b", list(range(9)), NS_B)
    assert seq.num_cached_tokens == 0 and set(seq.block_ids).isdisjoint({0, 1})


def test_shared_prefix_is_refcounted_and_evicted_last():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", list(range(8)), NS)
    mgr.mark_computed("a", 8)
    mgr.allocate("b", list(range(4)) + [9, 9, 9, 9, 9], NS)
    assert mgr.allocator.blocks[0].ref_cnt == 2
    mgr.free("a")
    mgr.free("b")
    order = [b.block_id for b in mgr.allocator.free_queue]
    assert order.index(0) > order.index(1)  # the prefix block outlives its suffix


def test_append_allocates_on_block_boundary_and_registers_when_computed():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", [1, 2, 3], NS)
    assert mgr.append("a", [4]) == []
    assert [b.block_id for b in mgr.append("a", [5])] == [1]
    assert mgr.mark_computed("a", 5)[0].block_id == 0
    assert mgr.slot_mapping("a", 4, 5) == [4]


def test_out_of_blocks_is_typed_and_changes_nothing():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", list(range(12)), NS)
    with pytest.raises(OutOfBlocksError, match=r"need 3 device blocks, 2 free or evictable of 5"):
        mgr.allocate("b", list(range(100, 112)), NS)
    assert mgr.num_free_blocks == 2 and "b" not in mgr.seqs


def test_errors_for_bad_sequences():
    mgr = BlockManager(5, 4)
    mgr.allocate("a", [1], NS)
    with pytest.raises(ValueError, match="sequence 'a' is already allocated"):
        mgr.allocate("a", [1], NS)
    with pytest.raises(ValueError, match="sequence 'b' has no tokens"):
        mgr.allocate("b", [], NS)
    with pytest.raises(ValueError, match="token ids must be integers"):
        mgr.allocate("c", [1.0, 2.0, 3.0, 4.0], NS)
    mgr.free("a")
    with pytest.raises(ValueError, match="unknown sequence 'a': never allocated or already freed"):
        mgr.free("a")
    with pytest.raises(ValueError, match=r"token range \[0, 9\) outside the 1 blocks"):
        mgr.allocate("d", [1], NS) and mgr.slot_mapping("d", 0, 9)


@pytest.mark.parametrize("bad", [0, -16, 16.0, "16", None])
def test_block_size_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="BlockManager.block_size must be"):
        BlockManager(5, bad)
