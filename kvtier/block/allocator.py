"""BlockAllocator: the device pool's bookkeeping: refcounts, LRU reuse, and the prefix-cache map.

A block whose refcount drops to zero keeps its hash and stays findable until it is reused;
reuse evicts it, and the eviction hook receives it first (so its bytes can be offloaded).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from kvtier.block.block import Block
from kvtier.block.free_queue import FreeBlocks
from kvtier.config import check_positive_int
from kvtier.errors import OutOfBlocksError
from kvtier.types import BlockHash, Namespace

EvictionHook = Callable[[list[Block]], None]
"""Receives blocks about to be reused while they still hold their hash and bytes."""


class BlockAllocator:
    """Allocates device block ids, counts their users, and finds cached blocks by hash."""

    def __init__(self, num_blocks: int, eviction_hook: EvictionHook | None = None) -> None:
        check_positive_int("BlockAllocator", "num_blocks", num_blocks)
        self.num_blocks = num_blocks
        self.blocks: list[Block] = []  # NOTE: made as first handed out (FreeBlocks.make); `block()` makes all
        self.free_queue = FreeBlocks(num_blocks, self.blocks)
        self.cached: dict[BlockHash, Block] = {}
        self.eviction_hook = eviction_hook
        self.num_evicted = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no user (some still hold a cached hash)."""
        return self.free_queue.num_free_blocks

    def can_allocate(self, n: int) -> bool:
        return n <= self.free_queue.num_free_blocks

    def get_cached(self, block_hashes: Sequence[BlockHash]) -> list[Block]:
        """The longest prefix of `block_hashes` resident on the device (not yet touched)."""
        hits: list[Block] = []
        cached = self.cached
        for block_hash in block_hashes:
            block = cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate(self, n: int) -> list[Block]:
        """Take `n` blocks for a new user: empty ones first, then evicting cached ones in line.

        Raises:
            OutOfBlocksError: fewer than `n` blocks are free or evictable.
        """
        if n > self.free_queue.num_free_blocks:
            raise OutOfBlocksError(
                f"need {n} device blocks, {self.free_queue.num_free_blocks} free or evictable of "
                f"{self.num_blocks}; free finished sequences, raise num_device_blocks, or add a host tier")
        blocks = self.free_queue.popleft_n(n)
        evicted: list[Block] = []
        for block in blocks:
            block.ref_cnt = 1
            if block.block_hash is not None:
                evicted.append(block)
        if evicted:
            if self.eviction_hook is not None:
                self.eviction_hook(evicted)
            cached = self.cached
            for block in evicted:
                del cached[block.block_hash]  # type: ignore[arg-type]
                block.block_hash = block.namespace = block.token_source = None  # forget its identity
            self.num_evicted += len(evicted)
        return blocks

    def touch(self, blocks: Sequence[Block]) -> None:
        """Add a user to each block (a prefix hit), taking free ones off the free queue."""
        remove = self.free_queue.remove
        for block in blocks:
            if block.ref_cnt == 0:
                remove(block)
            block.ref_cnt += 1

    def free(self, blocks: Sequence[Block], evict_first: bool = False) -> None:
        """Drop one user of each block; blocks reaching zero join the LRU tail in the order given
        (`evict_first`: the front of the line instead, see FreeBlocks).

        Callers pass a sequence's blocks tail first, so a prefix outlives its suffixes.
        """
        freed: list[Block] = []
        for i, block in enumerate(blocks):
            if block.ref_cnt <= 0:
                for done in blocks[:i]:  # undo, so a refused call changes nothing
                    done.ref_cnt += 1
                raise RuntimeError(f"double free: {block} has no users")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                freed.append(block)
        if evict_first:
            self.free_queue.prepend_n(freed)
        else:
            self.free_queue.append_n(freed)

    def cache_blocks(self, blocks: Sequence[Block], block_hashes: Sequence[BlockHash], namespace: Namespace,
                     token_ids: Sequence[int], block_size: int, start: int, stop: int) -> list[Block]:
        """Register full, computed blocks [start, stop) of a sequence under their hashes.

        Returns the blocks now holding those hashes. NOTE: when another block already holds a hash
        (two sequences computed the same prefix at once) that one stays canonical and the
        sequence's own block simply stays unregistered until it is freed.
        """
        cached = self.cached
        registered: list[Block] = []
        for i in range(start, stop):
            block_hash = block_hashes[i]
            block = cached.get(block_hash)
            if block is None:
                block = blocks[i]
                block.block_hash, block.namespace = block_hash, namespace
                block.token_source, block.token_start = token_ids, i * block_size
                cached[block_hash] = block
            registered.append(block)
        return registered

    def block(self, block_id: int) -> Block:
        """The block with this id; ValueError for an unknown id."""
        if isinstance(block_id, bool) or not isinstance(block_id, int) or not 0 <= block_id < self.num_blocks:
            raise ValueError(f"unknown block id {block_id!r}: this pool has ids 0..{self.num_blocks - 1}")
        if block_id >= len(self.blocks):
            self.free_queue.make_all()
        return self.blocks[block_id]
