"""PinCounts: how many transfers pin each block of a tier (pins nest), for tiers that keep no index
entry of their own per block (host slots, the remote tier's keys); the disk index counts in its entries."""
from __future__ import annotations

from kvtier.types import BlockHash


class PinCounts(dict[BlockHash, int]):
    """Block hash -> pins held (absent: none). Not locked: the tier's own lock guards it."""

    def add(self, block_hash: BlockHash) -> None:
        self[block_hash] = self.get(block_hash, 0) + 1

    def release(self, block_hash: BlockHash) -> None:
        """One pin fewer; RuntimeError when the block holds none (a caller bug)."""
        count = self.get(block_hash, 0)
        if count <= 0:
            raise RuntimeError(f"unpin of block {block_hash.hex()[:16]}, which is not pinned")
        if count == 1:
            del self[block_hash]
        else:
            self[block_hash] = count - 1
