"""FreeBlockQueue: an O(1) LRU list of free blocks, intrusive and sentinel-linked.

The head is the next block to hand out (least recently freed); freed blocks go to the tail.
A free block may still hold a cached hash: it is evicted only when popped for reuse.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from kvtier.block.block import Block
from kvtier.errors import OutOfBlocksError
from kvtier.types import BlockId


class FreeBlockQueue:
    """Doubly linked list over `Block.prev_free/next_free` with fake head and tail nodes."""

    def __init__(self, blocks: Iterable[Block]) -> None:
        self._head = Block(BlockId(-1))
        self._tail = Block(BlockId(-1))
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        self.append_n(list(blocks))

    def popleft(self) -> Block:
        """Remove and return the least recently freed block; OutOfBlocksError when empty."""
        return self.popleft_n(1)[0]

    def popleft_n(self, n: int) -> list[Block]:
        """Remove and return the `n` least recently freed blocks, oldest first."""
        if n > self.num_free_blocks:
            raise OutOfBlocksError(f"need {n} free blocks, {self.num_free_blocks} in the free queue")
        out: list[Block] = []
        node = self._head.next_free
        for _ in range(n):
            assert node is not None, "free queue broken: count exceeds linked nodes"
            out.append(node)
            nxt = node.next_free
            node.prev_free = node.next_free = None
            node = nxt
        self._head.next_free = node
        assert node is not None, "free queue broken: missing tail"
        node.prev_free = self._head
        self.num_free_blocks -= n
        return out

    def remove(self, block: Block) -> None:
        """Unlink a block from anywhere in the queue (a cache hit on a free block)."""
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise RuntimeError(f"{block} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def append(self, block: Block) -> None:
        self.append_n([block])

    def append_n(self, blocks: list[Block]) -> None:
        """Link blocks at the tail in order: the last one is evicted last."""
        if not blocks:
            return
        last = self._tail.prev_free
        assert last is not None, "free queue broken: missing head"
        for block in blocks:
            if block.prev_free is not None or block.next_free is not None:
                raise RuntimeError(f"{block} is already in the free queue")
            block.prev_free = last
            last.next_free = block
            last = block
        last.next_free = self._tail
        self._tail.prev_free = last
        self.num_free_blocks += len(blocks)

    def __iter__(self) -> Iterator[Block]:
        """Blocks from head (next to reuse) to tail."""
        node = self._head.next_free
        while node is not None and node is not self._tail:
            yield node
            node = node.next_free
