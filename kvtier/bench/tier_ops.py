"""Block ops through a tier's public sync API (put / get into a reused buffer) and the data they move."""
from __future__ import annotations

import threading

import torch

from kvtier.bench.workload import BlockOp
from kvtier.block.hashing import hash_block_tokens, namespace_digest
from kvtier.config import KVLayout
from kvtier.errors import KVTierError
from kvtier.tiers.aligned import page_aligned_empty
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.transfer.aio import AsyncTier

NUM_DATA = 8  # distinct block payloads cycled through the writes


class BenchCheckError(KVTierError):
    """The tier did not give back what was put before timing started; nothing was measured."""


def data_pool(layout: KVLayout, seed: int, num_data: int = NUM_DATA) -> list[torch.Tensor]:
    """`num_data` blocks of standard-normal KV values in the layout's dtype (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    # [num_layers, 2, num_kv_heads, block_size, head_dim], page-aligned as host slots are
    return [page_aligned_empty(layout.block_shape, layout.dtype).copy_(torch.randn(layout.block_shape, generator=gen))
            for _ in range(num_data)]


def check_round_trip(store: TierStore, layout: KVLayout, pool: list[torch.Tensor]) -> None:
    """Put one block under a throwaway key, read it back bit-identical, then evict it.

    Raises:
        BenchCheckError: the block came back missing or different.
    """
    namespace = namespace_digest("kvtier-bench/check")
    token_ids = tuple(range(layout.block_size))
    key = BlockKey(namespace, hash_block_tokens(namespace, token_ids), token_ids)
    store.put(key, pool[0])
    out = torch.empty(layout.block_shape, dtype=layout.dtype)
    got = store.get(key, out=out)
    if got is None:
        raise BenchCheckError(f"{type(store).__name__} missed a block put just before; not measuring")
    if not torch.equal(got.view(torch.uint8), pool[0].view(torch.uint8)):
        raise BenchCheckError(f"{type(store).__name__} returned different bytes for a block put just "
                              "before; not measuring")
    store.evict(key.block_hash)


class TierOps:
    """Runs block ops on a TierStore: writes `put` a pool tensor, reads `get` into a per-thread buffer."""

    def __init__(self, store: TierStore, pool: list[torch.Tensor]) -> None:
        self.store = store
        self._pool = pool
        self._local = threading.local()

    def _out(self) -> torch.Tensor:
        out = getattr(self._local, "out", None)
        if out is None:
            out = self._local.out = page_aligned_empty(self._pool[0].shape, self._pool[0].dtype)
        return out

    def run(self, op: BlockOp) -> bool:
        """Do one op; False on a read miss."""
        if op.kind == "write":
            self.store.put(op.key, self._pool[op.data_index])
            return True
        return self.store.get(op.key, out=self._out()) is not None


class AsyncTierOps:
    """Block ops through a tier's asyncio API (AsyncTier); each worker task reads into its own buffer."""

    def __init__(self, store: AsyncTier, pool: list[torch.Tensor], concurrency: int) -> None:
        self.store = store
        self._pool = pool
        self._outs = [page_aligned_empty(pool[0].shape, pool[0].dtype) for _ in range(concurrency)]

    async def run(self, op: BlockOp, worker: int) -> bool:
        if op.kind == "write":
            await self.store.put(op.key, self._pool[op.data_index])
            return True
        return await self.store.get(op.key, out=self._outs[worker]) is not None
