"""FreeBlockQueue: an O(1) LRU list of free blocks, intrusive and sentinel-linked; FreeBlocks:
the allocator's two of them (empty blocks, then cached ones).

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

    def prepend_n(self, blocks: list[Block]) -> None:
        """Link blocks at the head in order: the first one is evicted first."""
        if not blocks:
            return
        for block in blocks:
            if block.prev_free is not None or block.next_free is not None:
                raise RuntimeError(f"{block} is already in the free queue")
        chain = [self._head, *blocks, self._head.next_free]
        for left, right in zip(chain, chain[1:]):
            assert left is not None and right is not None, "free queue broken: missing tail"
            left.next_free, right.prev_free = right, left
        self.num_free_blocks += len(blocks)

    def __iter__(self) -> Iterator[Block]:
        """Blocks from head (next to reuse) to tail."""
        node = self._head.next_free
        while node is not None and node is not self._tail:
            yield node
            node = node.next_free


class FreeBlocks:
    """Every free block, in the order they are reused: empty ones first (freed without a cached
    hash, then never used), then cached ones least recently freed first, so a cached block is
    evicted only when no empty block is left.

    Never-used blocks are made only when first handed out (appended to `blocks`, ids in order):
    a pool's bookkeeping then costs what it uses (making 15k Blocks up front took 10-105 ms here,
    growing with the heap the garbage collector walks, at every cache opened).

    `prepend_n` puts cached blocks first in line instead, for a caller that knows it needs them
    after everything else (a layer-by-layer cache: the layer just run is the last one needed again).
    """

    def __init__(self, num_blocks: int, blocks: list[Block]) -> None:
        self.num_blocks = num_blocks
        self.blocks = blocks  # every Block made so far, indexed by id
        self.empty = FreeBlockQueue([])
        self.cached = FreeBlockQueue([])

    @property
    def num_free_blocks(self) -> int:
        return self.empty.num_free_blocks + self.cached.num_free_blocks + self.num_blocks - len(self.blocks)

    def make(self, n: int) -> list[Block]:
        """The next `n` never-used blocks, made now (not linked anywhere)."""
        start = len(self.blocks)
        if start + n > self.num_blocks:
            raise OutOfBlocksError(f"need {n} new blocks, {self.num_blocks - start} never used")
        made = [Block(BlockId(i)) for i in range(start, start + n)]
        self.blocks.extend(made)
        return made

    def make_all(self) -> None:
        """Make every never-used block now, linked as empty (for lookups by id and iteration)."""
        self.empty.append_n(self.make(self.num_blocks - len(self.blocks)))

    def popleft_n(self, n: int) -> list[Block]:
        """The next `n` blocks to reuse: empty ones first, then the cached ones in line."""
        if n > self.num_free_blocks:
            raise OutOfBlocksError(f"need {n} free blocks, {self.num_free_blocks} free")
        out = self.empty.popleft_n(min(n, self.empty.num_free_blocks))
        if len(out) < n:
            out += self.make(min(n - len(out), self.num_blocks - len(self.blocks)))
        if len(out) < n:
            out += self.cached.popleft_n(n - len(out))
        return out

    def remove(self, block: Block) -> None:
        (self.cached if block.block_hash is not None else self.empty).remove(block)

    def append_n(self, blocks: list[Block]) -> None:
        """Cached blocks to the back of the line (evicted last), empty ones to the empty list."""
        self.empty.append_n([b for b in blocks if b.block_hash is None])
        self.cached.append_n([b for b in blocks if b.block_hash is not None])

    def prepend_n(self, blocks: list[Block]) -> None:
        """Cached blocks to the front of the line (evicted first, in the order given), empty ones as append_n."""
        self.empty.append_n([b for b in blocks if b.block_hash is None])
        self.cached.prepend_n([b for b in blocks if b.block_hash is not None])

    def __iter__(self) -> Iterator[Block]:
        """Every free block in the order they would be reused (never-used ones are made first)."""
        self.make_all()
        yield from self.empty
        yield from self.cached
