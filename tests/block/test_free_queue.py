import pytest

from kvtier.block.block import Block
from kvtier.block.free_queue import FreeBlockQueue
from kvtier.errors import OutOfBlocksError


def ids(queue):
    return [b.block_id for b in queue]


def test_popleft_returns_least_recently_freed_first():
    blocks = [Block(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    assert [b.block_id for b in queue.popleft_n(2)] == [0, 1]
    assert ids(queue) == [2, 3, 4] and queue.num_free_blocks == 3


def test_free_returns_block_to_lru_tail():
    blocks = [Block(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    first = queue.popleft()
    queue.append(first)
    assert ids(queue) == [1, 2, 3, 4, 0]


def test_remove_from_the_middle_keeps_links():
    blocks = [Block(i) for i in range(5)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert ids(queue) == [0, 1, 3, 4] and queue.num_free_blocks == 4
    assert [b.block_id for b in queue.popleft_n(4)] == [0, 1, 3, 4]
    assert ids(queue) == [] and queue.num_free_blocks == 0


def test_popleft_on_empty_raises_out_of_blocks():
    queue = FreeBlockQueue([Block(0)])
    queue.popleft()
    with pytest.raises(OutOfBlocksError, match="need 1 free blocks, 0 in the free queue"):
        queue.popleft()


def test_remove_of_unlinked_block_names_it():
    queue = FreeBlockQueue([Block(0)])
    block = queue.popleft()
    with pytest.raises(RuntimeError, match=r"Block\(id=0, ref_cnt=0, hash=None\) is not in the free queue"):
        queue.remove(block)


def test_double_append_is_refused():
    blocks = [Block(0), Block(1)]
    queue = FreeBlockQueue(blocks)
    with pytest.raises(RuntimeError, match="already in the free queue"):
        queue.append(blocks[1])
    assert ids(queue) == [0, 1]
