"""TieredKVCache: the block manager, the device pool and the tiers below it, wired together.

Device evictions are offloaded down (write-back) to the first lower tier; a prompt whose prefix
continues in a lower tier has those blocks onloaded into fresh device blocks before it runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kvtier.block.block import Block
from kvtier.block.manager import BlockManager, SeqState
from kvtier.config import KVLayout
from kvtier.errors import KVTierError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.gpu import DevicePool
from kvtier.types import BlockHash, Namespace, SeqId, TierKind


@dataclass(slots=True)
class CacheStats:
    """Blocks looked up and where they were found; blocks moved per tier."""

    lookup_blocks: int = 0  # full blocks of prompts that could have hit
    hit_blocks: dict[TierKind, int] = field(default_factory=lambda: {k: 0 for k in TierKind})
    offloaded_blocks: int = 0  # device -> first lower tier
    dropped_blocks: int = 0  # evicted from the device with no lower tier able to take them
    onloaded_bytes: int = 0
    offloaded_bytes: int = 0

    def hit_rate(self, kind: TierKind) -> float:
        return self.hit_blocks[kind] / self.lookup_blocks if self.lookup_blocks else 0.0


class TieredKVCache:
    """Allocates KV blocks to sequences and keeps evicted prefixes in slower tiers."""

    def __init__(self, layout: KVLayout, num_device_blocks: int, lower_tiers: Sequence[TierStore] = (),
                 device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.pool = DevicePool(layout, num_device_blocks, device)
        self.manager = BlockManager(num_device_blocks, layout.block_size, eviction_hook=self._offload)
        self.tiers = list(lower_tiers)
        for upper, lower in zip(self.tiers, self.tiers[1:]):
            upper.set_eviction_hook(lower.put)  # NOTE: write-back cascade host -> disk -> ...
        self.stats = CacheStats()

    @staticmethod
    def key_of(block: Block) -> BlockKey:
        assert block.block_hash is not None and block.namespace is not None and block.token_ids is not None, \
            f"{block} is not registered"
        return BlockKey(block.namespace, block.block_hash, tuple(block.token_ids))

    def allocate(self, seq_id: SeqId, token_ids: Sequence[int], namespace: Namespace,
                 extra_keys: bytes = b"") -> SeqState:
        """Blocks for a new prompt: device prefix hits, then lower-tier hits onloaded, then fresh blocks.

        `seq.num_cached_tokens` says how many leading tokens need no compute.
        """
        hashes = self.manager.hash_tokens(token_ids, namespace, extra_keys)
        max_hits = self.manager.max_hit_blocks(len(token_ids))
        num_device_hits = len(self.manager.allocator.get_cached(hashes[:max_hits]))
        # NOTE: find and pin lower-tier hits before allocating, since allocating evicts device
        # blocks and the cascade of write-backs could otherwise push these very blocks out.
        found = self._find_lower(namespace, token_ids, hashes, num_device_hits, max_hits)
        try:
            seq = self.manager.allocate(seq_id, token_ids, namespace, block_hashes=hashes, extra_keys=extra_keys)
            num_onloaded = self._onload(seq, found)
        finally:
            for tier, key in found:
                tier.unpin(key.block_hash)
        self.stats.lookup_blocks += max_hits
        self.stats.hit_blocks[TierKind.DEVICE] += num_device_hits
        if num_onloaded:
            self.manager.mark_computed(seq_id, (num_device_hits + num_onloaded) * self.layout.block_size)
            seq.num_cached_tokens = seq.num_registered_blocks * self.layout.block_size
        return seq

    def _find_lower(self, namespace: Namespace, token_ids: Sequence[int], hashes: list[BlockHash],
                    start: int, stop: int) -> list[tuple[TierStore, BlockKey]]:
        """The run of blocks [start, ...) found in lower tiers, each pinned in the tier holding it."""
        bs, found = self.layout.block_size, []
        for i in range(start, stop):
            tier = next((t for t in self.tiers if t.contains(hashes[i])), None)
            if tier is None:
                break
            tier.pin(hashes[i])
            found.append((tier, BlockKey(namespace, hashes[i], tuple(token_ids[i * bs:(i + 1) * bs]))))
        return found

    def _onload(self, seq: SeqState, found: list[tuple[TierStore, BlockKey]]) -> int:
        """Copy the found blocks into the sequence's first fresh blocks; stops at the first failed read."""
        staging: list[torch.Tensor] = []
        for tier, key in found:
            data = tier.get(key)  # None when the object failed verification: a miss, recomputed
            if data is None:
                break
            self.stats.hit_blocks[tier.kind] += 1
            staging.append(data)
        if staging:
            start = seq.num_registered_blocks
            self.pool.write_blocks(seq.block_ids[start:start + len(staging)], torch.stack(staging))
            self.stats.onloaded_bytes += len(staging) * self.layout.page_size_bytes
        return len(staging)

    def _offload(self, blocks: list[Block]) -> None:
        """Eviction hook of the device pool: write the blocks down before they are reused."""
        if not self.tiers:
            self.stats.dropped_blocks += len(blocks)
            return
        data = self.pool.read_blocks([b.block_id for b in blocks]).cpu()
        for block, block_data in zip(blocks, data):
            try:
                self.tiers[0].put(self.key_of(block), block_data)
            except KVTierError:  # full of pinned blocks or an I/O fault: the block is just not kept
                self.stats.dropped_blocks += 1
                continue
            self.stats.offloaded_blocks += 1
            self.stats.offloaded_bytes += self.layout.page_size_bytes

    def mark_computed(self, seq_id: SeqId, num_tokens: int) -> list[Block]:
        return self.manager.mark_computed(seq_id, num_tokens)

    def append(self, seq_id: SeqId, token_ids: Sequence[int]) -> list[Block]:
        return self.manager.append(seq_id, token_ids)

    def free(self, seq_id: SeqId) -> None:
        self.manager.free(seq_id)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
