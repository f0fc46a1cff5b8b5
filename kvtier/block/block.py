"""Block: the metadata of one device block. Bookkeeping only; the bytes live in the device pool."""
from __future__ import annotations

from collections.abc import Sequence

from kvtier.types import BlockHash, BlockId, Namespace


class Block:
    """One device block: its id, its users, and, once full and computed, its identity.

    `prev_free`/`next_free` link it into the free queue while `ref_cnt == 0` (see free_queue.py).
    """

    __slots__ = (
        "block_hash",
        "block_id",
        "namespace",
        "next_free",
        "prev_free",
        "ref_cnt",
        "token_source",
        "token_start",
    )

    def __init__(self, block_id: BlockId) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None  # set once the block is full and registered
        self.namespace: Namespace | None = None
        # NOTE: the block's own tokens are `token_source[token_start:token_start + block_size]`, kept
        # as a reference to its sequence's append-only token list, not sliced out at registration:
        # only blocks that are offloaded ever need them (for the tier headers).
        self.token_source: Sequence[int] | None = None
        self.token_start = 0
        self.prev_free: Block | None = None
        self.next_free: Block | None = None

    def token_ids(self, block_size: int) -> tuple[int, ...]:
        """This block's own token ids (a registered block only)."""
        assert self.token_source is not None, f"{self} is not registered"
        return tuple(self.token_source[self.token_start:self.token_start + block_size])

    def __repr__(self) -> str:
        digest = self.block_hash.hex()[:12] if self.block_hash else None
        return f"Block(id={self.block_id}, ref_cnt={self.ref_cnt}, hash={digest})"
