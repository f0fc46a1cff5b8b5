"""Block: the metadata of one device block. Bookkeeping only; the bytes live in the device pool."""
from __future__ import annotations

from collections.abc import Sequence

from kvtier.types import BlockHash, BlockId, Namespace


class Block:
    """One device block: its id, its users, and, once full and computed, its identity.

    `prev_free`/`next_free` link it into the free queue while `ref_cnt == 0` (see free_queue.py).
    """

    __slots__ = ("block_id", "ref_cnt", "block_hash", "namespace", "token_ids", "prev_free", "next_free")

    def __init__(self, block_id: BlockId) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None  # set once the block is full and registered
        self.namespace: Namespace | None = None
        self.token_ids: Sequence[int] | None = None  # this block's own tokens, for the tier headers
        self.prev_free: Block | None = None
        self.next_free: Block | None = None

    @property
    def is_cached(self) -> bool:
        return self.block_hash is not None

    def reset_hash(self) -> None:
        self.block_hash = None
        self.namespace = None
        self.token_ids = None

    def __repr__(self) -> str:
        digest = self.block_hash.hex()[:12] if self.block_hash else None
        return f"Block(id={self.block_id}, ref_cnt={self.ref_cnt}, hash={digest})"
