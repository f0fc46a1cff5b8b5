"""HostStore: a slab of block slots in host RAM (pinned when CUDA is present), LRU-evicted."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch

from kvtier.config import KVLayout, check_positive_int
from kvtier.errors import KVTierError, TierFullError
from kvtier.tiers.aligned import page_aligned_empty
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.pins import PinCounts
from kvtier.types import BlockHash, TierKind


class HostStore(TierStore):
    """`num_slots` blocks of `layout.block_shape` in one preallocated tensor.

    NOTE: the slab is allocated once, so capacity is exact and a put never allocates;
    pinned memory lets device copies run asynchronously on CUDA.
    """

    kind = TierKind.HOST
    puts_inline = True  # a put is a memory copy: the eviction hook does it on the caller's thread

    def __init__(self, layout: KVLayout, num_slots: int, *, pin_memory: bool | None = None) -> None:
        super().__init__(layout)
        check_positive_int("HostStore", "num_slots", num_slots)
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        # [num_slots, num_layers, 2, num_kv_heads, block_size, head_dim]; page-aligned for O_DIRECT disk tiers
        self.slab = page_aligned_empty((num_slots, *layout.block_shape), layout.dtype, pin_memory=pin)
        self._slots: OrderedDict[BlockHash, int] = OrderedDict()  # LRU first
        self._keys: dict[int, BlockKey] = {}
        self._free_slots = list(range(num_slots - 1, -1, -1))
        self._pins = PinCounts()
        self._lock = threading.Lock()

    @property
    def capacity_bytes(self) -> int:
        return self.slab.shape[0] * self.layout.page_size_bytes

    @property
    def used_bytes(self) -> int:
        return len(self._slots) * self.layout.page_size_bytes

    @property
    def num_blocks(self) -> int:
        return len(self._slots)

    def contains(self, block_hash: BlockHash) -> bool:
        return block_hash in self._slots

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        self.check_block(data)
        with self._lock:
            if key.block_hash in self._slots:
                self._slots.move_to_end(key.block_hash)
                return
            slot = self._take_slot()
            self.slab[slot].copy_(data)
            self._slots[key.block_hash] = slot
            self._keys[slot] = key
            self.stats.puts += 1
            self.stats.bytes_written += self.layout.page_size_bytes

    def _take_slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        victim = next((h for h in self._slots if h not in self._pins), None)
        if victim is None:
            self.stats.rejected += 1
            raise TierFullError(
                f"host tier full: {len(self._slots)} of {self.slab.shape[0]} slots hold blocks and all "
                f"{len(self._pins)} are pinned by transfers; wait for transfers or raise num_host_blocks")
        slot = self._slots.pop(victim)
        key = self._keys.pop(slot)
        if self._eviction_hook is not None:
            try:
                self._eviction_hook(key, self.slab[slot])
            except KVTierError:  # the lower tier refused or failed: it counted why; the slot is still ours
                pass
        self.stats.evictions += 1
        return slot

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        if out is not None:
            self.check_block(out, "get")
        with self._lock:
            slot = self._slots.get(key.block_hash)
            if slot is None or self._keys[slot] != key:
                self.stats.misses += 1
                return None
            self._slots.move_to_end(key.block_hash)
            self.stats.hits += 1
            self.stats.bytes_read += self.layout.page_size_bytes
            if out is None:
                return self.slab[slot].clone()
            return out.copy_(self.slab[slot])

    def entries(self) -> list[tuple[BlockKey, torch.Tensor]]:
        """A copy of every block held, LRU first, with its key (for `TieredKVCache.persist`)."""
        with self._lock:
            return [(self._keys[slot], self.slab[slot].clone()) for slot in self._slots.values()]

    def pin(self, block_hash: BlockHash) -> None:
        if not self.pin_if_held(block_hash):
            raise KeyError(f"cannot pin block {block_hash.hex()[:16]}: not in the host tier")

    def pin_if_held(self, block_hash: BlockHash) -> bool:
        with self._lock:
            return self._pin_locked(block_hash)

    def pin_known(self, block_hashes: Sequence[BlockHash]) -> list[bool]:
        with self._lock:
            return [self._pin_locked(block_hash) for block_hash in block_hashes]

    def _pin_locked(self, block_hash: BlockHash) -> bool:
        if block_hash not in self._slots:
            return False
        self._pins.add(block_hash)
        return True

    def unpin(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._pins.release(block_hash)

    def unpin_many(self, block_hashes: Iterable[BlockHash]) -> None:
        with self._lock:
            for block_hash in block_hashes:
                self._pins.release(block_hash)

    def evict(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if block_hash in self._pins:
                raise RuntimeError(f"cannot evict block {block_hash.hex()[:16]}: pinned by a transfer")
            slot = self._slots.pop(block_hash, None)
            if slot is None:
                return False
            del self._keys[slot]
            self._free_slots.append(slot)
            self.stats.evictions += 1
            return True
