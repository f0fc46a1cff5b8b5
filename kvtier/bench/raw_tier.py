"""The raw ceiling behind the TierStore API, for `kvtier bench storage --calibrate`.

Run in the tier's place, both sides of the bench do the same plain file I/O (raw_io's
write_file/read_file_into) in the same fan-out folders, so every ratio it reports would be 1.0
on a perfectly steady disk: how far they land from 1.0 is the method's noise floor here.
"""
from __future__ import annotations

import os
import threading

import torch

from kvtier.bench.raw_io import fanout_path, make_fanout, read_file_into, write_file
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.format.codecs import tensor_bytes
from kvtier.types import BlockHash, TierKind

TIER_SUFFIX = ".tier"  # as long as raw_io.RAW_SUFFIX, so both sides' names are alike


class RawFileTier(TierStore):
    """One headerless file per block, `ab/<hex>.tier` like the raw side's; no checks, no eviction."""

    kind = TierKind.DISK

    def __init__(self, layout: KVLayout, config: DiskTierConfig) -> None:
        super().__init__(layout)
        self.config = config
        self.folder = config.path
        make_fanout(self.folder)
        self._lock = threading.Lock()
        self._count = 0

    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def used_bytes(self) -> int:
        return self._count * self.layout.page_size_bytes

    @property
    def num_blocks(self) -> int:
        return self._count

    def path_of(self, block_hash: BlockHash) -> str:
        return fanout_path(self.folder, block_hash, TIER_SUFFIX)

    def contains(self, block_hash: BlockHash) -> bool:
        return os.path.exists(self.path_of(block_hash))

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        self.check_block(data)
        write_file(self.path_of(key.block_hash), tensor_bytes(data), self.config.fsync)
        with self._lock:
            self._count += 1

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        direct = out is not None and out.is_contiguous() and out.dtype == self.layout.dtype
        target = out if direct and out is not None else torch.empty(self.layout.block_shape, dtype=self.layout.dtype)
        buf = tensor_bytes(target)
        try:
            got = read_file_into(self.path_of(key.block_hash), buf)
        except FileNotFoundError:
            return None
        if got != buf.nbytes:
            return None
        return out.copy_(target) if out is not None and not direct else target

    def pin(self, block_hash: BlockHash) -> None:
        pass  # nothing is ever evicted behind the caller's back

    def unpin(self, block_hash: BlockHash) -> None:
        pass

    def evict(self, block_hash: BlockHash) -> bool:
        try:
            os.unlink(self.path_of(block_hash))
        except FileNotFoundError:
            return False
        with self._lock:
            self._count -= 1
        return True
