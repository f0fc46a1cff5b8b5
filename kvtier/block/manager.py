"""BlockManager: per-sequence block tables over the allocator, with prefix caching.

Lifecycle of a sequence: `allocate` (prefix hits + new blocks), the forward pass writes K/V,
`mark_computed` registers full blocks under their hashes, `append` grows it during decoding,
`free` returns its blocks tail first so the shared prefix is the last thing evicted.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvtier.block.allocator import BlockAllocator, EvictionHook
from kvtier.block.block import Block
from kvtier.block.block_table import slot_mapping
from kvtier.block.hashing import hash_blocks
from kvtier.config import check_positive_int
from kvtier.errors import OutOfBlocksError
from kvtier.types import BlockHash, BlockId, Namespace, SeqId


@dataclass(slots=True)
class SeqState:
    """What the manager knows of one live sequence."""

    seq_id: SeqId
    namespace: Namespace
    token_ids: list[int]
    blocks: list[Block]
    block_hashes: list[BlockHash]  # one per full block, chained from the namespace
    extra_keys: bytes = b""
    num_registered_blocks: int = 0  # leading blocks whose hashes are in the prefix cache
    num_cached_tokens: int = 0  # tokens served from the cache at allocation
    block_ids: list[BlockId] = field(default_factory=list)


class BlockManager:
    """Allocates device blocks to sequences and shares full blocks between equal prefixes."""

    def __init__(self, num_blocks: int, block_size: int, eviction_hook: EvictionHook | None = None) -> None:
        check_positive_int("BlockManager", "block_size", block_size)
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks, eviction_hook)
        self.seqs: dict[SeqId, SeqState] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    def hash_tokens(self, token_ids: Sequence[int], namespace: Namespace, extra_keys: bytes = b"") -> list[BlockHash]:
        """Chained hashes of every full block of a prompt (ValueError on non-integer tokens)."""
        return hash_blocks(namespace, token_ids, self.block_size, extra_keys)

    def max_hit_blocks(self, num_tokens: int) -> int:
        """Blocks a prompt may take from the cache: the last token is always computed (for logits)."""
        return max(num_tokens - 1, 0) // self.block_size

    def find_cached_prefix(self, block_hashes: list[BlockHash], num_tokens: int) -> list[Block]:
        """The device-resident blocks a prompt of `num_tokens` tokens may reuse (not yet touched)."""
        return self.allocator.get_cached(block_hashes[:self.max_hit_blocks(num_tokens)])

    def allocate(self, seq_id: SeqId, token_ids: Sequence[int], namespace: Namespace, *,
                 block_hashes: list[BlockHash] | None = None, extra_keys: bytes = b"",
                 cached_prefix: list[Block] | None = None) -> SeqState:
        """Give a new sequence its blocks: the longest cached prefix, then fresh blocks.

        `block_hashes` and `cached_prefix` (from `find_cached_prefix`) skip work a caller already did.

        Raises:
            ValueError: the id is live already, or the prompt is empty or not integers.
            OutOfBlocksError: too few free or evictable blocks; nothing is changed.
        """
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id!r} is already allocated; free it first")
        if not token_ids:
            raise ValueError(f"sequence {seq_id!r} has no tokens")
        hashes = block_hashes if block_hashes is not None else self.hash_tokens(token_ids, namespace, extra_keys)
        hits = cached_prefix if cached_prefix is not None else self.find_cached_prefix(hashes, len(token_ids))
        num_new = -(-len(token_ids) // self.block_size) - len(hits)
        self._check_room(num_new, hits)
        self.allocator.touch(hits)
        blocks = hits + self.allocator.allocate(num_new)
        seq = SeqState(seq_id=seq_id, namespace=namespace, token_ids=list(token_ids), blocks=blocks,
                       block_hashes=hashes, extra_keys=extra_keys, num_registered_blocks=len(hits),
                       num_cached_tokens=len(hits) * self.block_size,
                       block_ids=[b.block_id for b in blocks])
        self.seqs[seq_id] = seq
        return seq

    def _check_room(self, num_new: int, hits: list[Block]) -> None:
        num_hits_free = sum(1 for b in hits if b.ref_cnt == 0)  # touching them takes them off the free list
        available = self.allocator.num_free_blocks - num_hits_free
        if num_new > available:
            raise OutOfBlocksError(
                f"need {num_new} device blocks, {available} free or evictable of {self.allocator.num_blocks} "
                f"(plus {len(hits)} cached prefix blocks); free finished sequences, raise "
                f"num_device_blocks, or add a host tier")

    def mark_computed(self, seq_id: SeqId, num_tokens: int) -> list[Block]:
        """Register the full blocks among the first `num_tokens` tokens; returns those newly registered."""
        seq = self.seq(seq_id)
        if not 0 <= num_tokens <= len(seq.token_ids):
            raise ValueError(f"sequence {seq_id!r} has {len(seq.token_ids)} tokens, cannot mark {num_tokens} computed")
        num_full = num_tokens // self.block_size
        bs, start = self.block_size, seq.num_registered_blocks
        if num_full <= start:
            return []
        if len(seq.block_hashes) < num_full:
            parent = seq.block_hashes[-1] if seq.block_hashes else seq.namespace
            seq.block_hashes += hash_blocks(parent, seq.token_ids[len(seq.block_hashes) * bs:num_full * bs],
                                            bs, seq.extra_keys)
        registered = self.allocator.cache_blocks(seq.blocks, seq.block_hashes, seq.namespace, seq.token_ids,
                                                 bs, start, num_full)
        seq.num_registered_blocks = num_full
        return registered

    def append(self, seq_id: SeqId, token_ids: Sequence[int]) -> list[Block]:
        """Extend a sequence (decoding); returns the blocks newly allocated for the new tokens."""
        seq = self.seq(seq_id)
        num_needed = -(-(len(seq.token_ids) + len(token_ids)) // self.block_size) - len(seq.blocks)
        new = self.allocator.allocate(num_needed) if num_needed > 0 else []
        seq.token_ids.extend(token_ids)
        seq.blocks += new
        seq.block_ids += [b.block_id for b in new]
        return new

    def free(self, seq_id: SeqId, evict_first: bool = False) -> None:
        """Release a sequence; its registered blocks stay cached until reused (`evict_first`: they
        are the first cached blocks evicted, for a caller that needs them after all the others)."""
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            raise ValueError(f"unknown sequence {seq_id!r}: never allocated or already freed")
        self.allocator.free(seq.blocks[::-1], evict_first)

    def seq(self, seq_id: SeqId) -> SeqState:
        try:
            return self.seqs[seq_id]
        except KeyError:
            raise ValueError(f"unknown sequence {seq_id!r}: never allocated or already freed") from None

    def slot_mapping(self, seq_id: SeqId, start: int, end: int) -> list[int]:
        """Slots for token positions [start, end) of a sequence."""
        return slot_mapping(self.seq(seq_id).block_ids, self.block_size, start, end)
