"""LayerStore: the K/V of a dense-attention model, layer by layer and row by row, kept as kvtier
blocks in a TieredKVCache, for callers that hand over K/V tensors instead of tokens (transformers'
Cache API).

Each (layer, row) is a chain of full blocks plus a tail of fewer than `block_size` tokens kept as
a tensor on the device. A block's "token ids" are ids this store hands out once, so every block
ever written has its own hash: rows that share a history (beam search, `repeat_interleave`) share
its blocks, and what they add afterwards can never collide. The blocks of a layer are pinned
only while that layer is being updated; between updates they are free cached blocks that the
pool evicts to the host and disk tiers when it needs room, the layer just updated first (every
other layer runs before it is needed again: least recently used would evict the very next one),
and that come back as prefix hits, from whichever tier holds them, on the layer's next update. On
a CPU pool, an update that adds no full block (most decode steps) reads them instead straight into
its output, from whichever tier holds them, and leaves the pool as it was (`_read_through`); the
steps after the first read them as planned at the first (`TieredKVCache.plan_read`: one compiled
call a layer when the disk tier holds them all).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.cache import PlannedRead, TieredKVCache
from kvtier.errors import LostBlocksError, OutOfBlocksError
from kvtier.types import BlockHash, Namespace, SeqId

MAX_TOKEN_ID = (1 << 32) - 1  # NOTE: the object header stores token ids as u32
# NOTE: a run of consecutive blocks is one strided copy (15 us for 33 SmolLM2 blocks here), scattered
# ids one index_select per head (50-70 us): runs win up to about this many (benches/bench_hf_cache.py)
MAX_RUN_COPIES = 8


@dataclass(slots=True)
class _Row:
    """One row of one layer: its full blocks (token ids and chained hashes) and its tail."""

    token_ids: list[int]
    hashes: list[BlockHash]
    tail_k: torch.Tensor  # [num_kv_heads, < block_size, head_dim]
    tail_v: torch.Tensor
    plan: _GatherPlan | None = None  # where its full blocks were on the device when last gathered
    read_plan: PlannedRead | None = None  # how its full blocks were last read through from a tier

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.tail_k.shape[1]


@dataclass(frozen=True, slots=True)
class _GatherPlan:
    """Where a row's full blocks sit in the pool, as runs of consecutive block ids, and the pool's
    eviction count when that was true: no block changes place or hash without an eviction, so an
    unchanged count means the plan still holds (a decode step then skips every lookup)."""

    num_evicted: int
    num_blocks: int
    runs: tuple[tuple[int, int, int], ...]  # (first block index in the row, first block id, length)
    ids: torch.Tensor | None  # every block id, for a gather of scattered ids (many runs); else None


class LayerStore:
    """Appends K/V `[batch, heads, tokens, head_dim]` per layer and returns each layer's whole K/V."""

    def __init__(self, cache: TieredKVCache, num_layers: int, store_id: str) -> None:
        if cache.layout.num_layers != 1:
            raise ValueError(f"LayerStore keeps one model layer per block; the cache's layout has "
                             f"{cache.layout.num_layers} layers")
        self.cache = cache
        self.block_size = cache.layout.block_size
        self._namespaces: list[Namespace] = [namespace_digest(f"kvtier-layer-store/{store_id}/{i}")
                                             for i in range(num_layers)]
        self._rows: list[list[_Row]] = [[] for _ in range(num_layers)]
        self._next_token_id = itertools.count()
        self._seq_ids = itertools.count()
        self._prefetches: dict[tuple[int, int], SeqId] = {}  # (layer, row) -> the sequence reading its blocks
        self.prefetched_rows = 0  # rows whose blocks a prefetch began reading

    def num_tokens(self, layer: int) -> int:
        rows = self._rows[layer]
        return rows[0].num_tokens if rows else 0

    def num_rows(self, layer: int) -> int:
        return len(self._rows[layer])

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's K/V of every row (`[batch, heads, new_tokens, head_dim]`); returns the
        layer's whole K/V `[batch, heads, tokens, head_dim]`, old tokens first.

        Raises:
            OutOfBlocksError: the device pool cannot hold one row of this layer.
            LostBlocksError: an earlier block of the layer is in no tier.
        """
        rows = self._rows[layer]
        if not rows:
            empty = keys[0, :, :0]
            rows += [_Row([], [], empty, empty) for _ in range(keys.shape[0])]
        if len(rows) != keys.shape[0]:
            raise ValueError(f"layer {layer} holds {len(rows)} rows, the update has {keys.shape[0]}")
        for index in range(len(rows)):  # NOTE: all first, so no row's prefetch holds blocks another row needs
            self._land_prefetch(layer, index)
        if not rows[0].num_tokens:  # NOTE: nothing stored before: the layer's K/V are this update's
            for index, row in enumerate(rows):
                self._append_row(layer, row, keys[index], values[index], None)
            return keys, values
        batch, heads, new, dim = keys.shape
        # NOTE: head-major, as the pool's pages are, so the gather from the pool is the only copy; K and V
        # in one tensor, so that a block's K and V in it are one block-shaped view (see _read_through)
        out = keys.new_empty((2, batch, heads, rows[0].num_tokens + new, dim))
        for index, row in enumerate(rows):
            self._append_row(layer, row, keys[index], values[index], out[:, index])
        return out[0], out[1]

    def prefetch(self, layer: int) -> None:
        """Start reading back, in the transfer engine's workers, the blocks of `layer` that left the
        device, so they come back while earlier layers compute; `append` then finds them there.

        A row whose blocks are all on the device, or that finds no room, is left to `append`.
        """
        if not self.cache.tiers:
            return
        for index, row in enumerate(self._rows[layer]):
            if (layer, index) in self._prefetches or not row.hashes:
                continue
            if len(self.cache.manager.find_cached_prefix(row.hashes, len(row.token_ids) + 1)) == len(row.hashes):
                continue
            seq_id = SeqId(f"layer-store-{next(self._seq_ids)}")
            try:
                self.cache.allocate(seq_id, [*row.token_ids, 0], self._namespaces[layer], block_hashes=row.hashes,
                                    wait=False)
            except OutOfBlocksError:
                return
            self._prefetches[(layer, index)] = seq_id
            self.prefetched_rows += 1

    def _land_prefetch(self, layer: int, index: int) -> None:
        """Place a row's prefetched blocks in the pool and release them there as cached blocks,
        last in line for eviction, so the row's allocation right after hits them."""
        seq_id = self._prefetches.pop((layer, index), None)
        if seq_id is not None:
            try:
                self.cache.finish_onload(seq_id)
            finally:
                self.cache.free(seq_id)

    def _drop_prefetches(self, layer: int) -> None:
        """Forget `layer`'s prefetches (its rows are about to change): their reads end or are cancelled."""
        for index in [i for (at, i) in self._prefetches if at == layer]:
            self.cache.free(self._prefetches.pop((layer, index)))

    def _append_row(self, layer: int, row: _Row, keys: torch.Tensor, values: torch.Tensor,
                    out: torch.Tensor | None) -> None:
        """Store one row's new K/V `[heads, new_tokens, head_dim]` and write all of its K/V into `out`
        `[2, heads, tokens, head_dim]` (K then V, each contiguous); None: store only."""
        bs = self.block_size
        if out is not None and out.shape[2] != row.num_tokens + keys.shape[1]:
            raise ValueError(f"layer {layer}: rows hold different numbers of tokens ({row.num_tokens} and "
                             f"{out.shape[2] - keys.shape[1]})")
        k_new, v_new = torch.cat((row.tail_k, keys), dim=1), torch.cat((row.tail_v, values), dim=1)
        num_new_full = k_new.shape[1] // bs
        old_blocks = len(row.token_ids) // bs
        if not num_new_full and (not old_blocks or out is None or self._gather_resident(row, out)
                                or self._read_through(layer, row, out)):
            row.tail_k, row.tail_v = k_new, v_new
            self._write_tail(row, out)
            return
        new_ids = [next(self._next_token_id) for _ in range(num_new_full * bs)]
        if new_ids and new_ids[-1] > MAX_TOKEN_ID:
            raise LostBlocksError("this store has handed out 2**32 token ids (the object header keeps 32 bits); "
                                  "open a new cache")
        token_ids = row.token_ids + new_ids
        parent = row.hashes[-1] if row.hashes else self._namespaces[layer]
        hashes = row.hashes + hash_blocks(parent, new_ids, bs)
        # NOTE: one token past the full blocks, so that every full block may be a hit (the cache
        # always leaves the last token to compute); its block stays unwritten and is freed below.
        seq_id = SeqId(f"layer-store-{next(self._seq_ids)}")
        try:
            seq = self.cache.allocate(seq_id, [*token_ids, 0], self._namespaces[layer], block_hashes=hashes)
        except OutOfBlocksError as exc:
            need, have = len(token_ids) // bs + 1, self.cache.pool.num_blocks
            raise OutOfBlocksError(f"one row of layer {layer} at {len(token_ids) + row.tail_k.shape[1]} tokens needs "
                                   f"{need} device blocks at once, the pool has {have} ({exc}); raise device_blocks "
                                   f"to at least {need}") from exc
        try:
            if seq.num_cached_tokens < old_blocks * bs:
                raise _lost(layer, old_blocks - seq.num_cached_tokens // bs, old_blocks)
            k_cache, v_cache = self.cache.pool.k_cache(0), self.cache.pool.v_cache(0)  # [blocks, heads, bs, dim]
            num_blocks = len(token_ids) // bs
            if num_new_full:
                # NOTE: whole blocks, so each is one page: copied in with no slot mapping
                fresh = torch.tensor(seq.block_ids[old_blocks:num_blocks], dtype=torch.int64, device=k_cache.device)
                for cache, new in ((k_cache, k_new), (v_cache, v_new)):
                    pages = new[:, :num_new_full * bs].view(new.shape[0], num_new_full, bs, new.shape[2])
                    cache.index_copy_(0, fresh, pages.transpose(0, 1))
                self.cache.mark_computed(seq_id, len(token_ids))
            plan = self._plan(seq.block_ids[:num_blocks])
            if out is not None:
                self._gather(plan, out)
        finally:
            # NOTE: first in line for eviction: every other layer runs before this one needs them again
            self.cache.free(seq_id, evict_first=True)
        row.token_ids, row.hashes, row.plan, row.read_plan = token_ids, hashes, plan, None
        row.tail_k, row.tail_v = k_new[:, num_new_full * bs:], v_new[:, num_new_full * bs:]
        self._write_tail(row, out)

    @staticmethod
    def _write_tail(row: _Row, out: torch.Tensor | None) -> None:
        if out is not None:
            out[0, :, len(row.token_ids):].copy_(row.tail_k)
            out[1, :, len(row.token_ids):].copy_(row.tail_v)

    def _gather_resident(self, row: _Row, out: torch.Tensor) -> bool:
        """Gather a row's full blocks into the outputs straight from the pool when every one of them
        is there, without allocating a sequence (most decode steps add no full block); False if not.

        NOTE: nothing is pinned: only an allocation evicts, and none runs until this returns. The
        blocks keep their place in the eviction order.
        """
        plan = row.plan
        if plan is None or plan.num_evicted != self.cache.manager.allocator.num_evicted:
            cached = self.cache.manager.allocator.cached
            blocks = [cached.get(block_hash) for block_hash in row.hashes]
            if any(block is None for block in blocks):
                return False
            plan = row.plan = self._plan([block.block_id for block in blocks if block is not None])
        self._gather(plan, out)
        return True

    def _read_through(self, layer: int, row: _Row, out: torch.Tensor) -> bool:
        """On a CPU pool, read a row's full blocks from whichever tier holds each straight into `out`
        (each block's K and V are one strided view of it), taking no device block: the step adds no
        block, so the row needs its K/V once, and moving its blocks up would only evict the next
        layer's. False on another device, where the blocks come up through the pool instead.

        Raises:
            LostBlocksError: a block is in no tier.
        """
        if self.cache.pool.device.type != "cpu":
            return False
        bs, num_blocks = self.block_size, len(row.hashes)
        # [2, heads, blocks * bs, dim] -> a [1, 2, heads, bs, dim] view per block, the pool's block shape
        heads, dim = out.shape[1], out.shape[3]
        blocks = out[:, :, :num_blocks * bs].view(2, heads, num_blocks, bs, dim).permute(2, 0, 1, 3, 4).unsqueeze(1)
        # NOTE: the same blocks as the last step's, mostly: read as planned then (a third of the
        # Python a block), else the usual way, which says what went wrong and plans the next step
        if row.read_plan is not None and self.cache.read_planned(row.read_plan, blocks):
            return True
        namespace = self._namespaces[layer]
        served = self.cache.read_into(namespace, row.token_ids, row.hashes, blocks.unbind(0))
        if served < num_blocks:
            raise _lost(layer, num_blocks - served, num_blocks)
        row.read_plan = self.cache.plan_read(namespace, row.token_ids, row.hashes)
        return True

    def _plan(self, block_ids: Sequence[int]) -> _GatherPlan:
        """The gather plan of blocks `block_ids`, valid until the pool next evicts."""
        breaks = [i for i in range(1, len(block_ids)) if block_ids[i] != block_ids[i - 1] + 1]
        runs = tuple((start, block_ids[start], stop - start) for start, stop in zip([0, *breaks],
                                                                                  [*breaks, len(block_ids)]))
        ids = None
        if len(runs) > MAX_RUN_COPIES:
            ids = torch.tensor(block_ids, dtype=torch.int64, device=self.cache.pool.k_cache(0).device)
        return _GatherPlan(self.cache.manager.allocator.num_evicted, len(block_ids), runs, ids)

    def _gather(self, plan: _GatherPlan, out_kv: torch.Tensor) -> None:
        """The blocks of `plan` into the first `plan.num_blocks * block_size` tokens of `out_kv`
        (`[2, heads, tokens, head_dim]`): a strided copy of a pool slice per run, or, past
        MAX_RUN_COPIES runs, one index_select of whole `[bs, dim]` pages per head."""
        bs, num = self.block_size, plan.num_blocks
        for cache, out in ((self.cache.pool.k_cache(0), out_kv[0]), (self.cache.pool.v_cache(0), out_kv[1])):
            heads, dim = cache.shape[1], cache.shape[3]
            if plan.ids is None:
                for start, first, length in plan.runs:
                    out[:, start * bs:(start + length) * bs].view(heads, length, bs, dim).copy_(
                        cache[first:first + length].transpose(0, 1))
                continue
            for head in range(heads):
                torch.index_select(cache[:, head], 0, plan.ids, out=out[head, :num * bs].view(num, bs, dim))

    def select_rows(self, layer: int, indices: list[int]) -> None:
        """Keep rows `indices` of `layer`, in that order; a row may appear more than once (its blocks
        are then shared, and what each copy adds later gets blocks of its own)."""
        rows = self._rows[layer]
        self._drop_prefetches(layer)
        if rows:
            self._rows[layer] = [_Row(list(rows[i].token_ids), list(rows[i].hashes), rows[i].tail_k, rows[i].tail_v,
                                      rows[i].plan, rows[i].read_plan) for i in indices]

    def truncate(self, layer: int, num_tokens: int) -> None:
        """Keep the first `num_tokens` tokens of every row of `layer`."""
        bs = self.block_size
        self._drop_prefetches(layer)
        for row in self._rows[layer]:
            if num_tokens >= row.num_tokens:
                continue
            if num_tokens >= len(row.token_ids):
                keep = num_tokens - len(row.token_ids)
                row.tail_k, row.tail_v = row.tail_k[:, :keep], row.tail_v[:, :keep]
                continue
            full_k, full_v = self._read_full(layer, row)
            num_blocks = num_tokens // bs
            row.tail_k, row.tail_v = full_k[:, num_blocks * bs:num_tokens], full_v[:, num_blocks * bs:num_tokens]
            row.token_ids, row.hashes = row.token_ids[:num_blocks * bs], row.hashes[:num_blocks]
            row.plan = row.read_plan = None

    def _read_full(self, layer: int, row: _Row) -> tuple[torch.Tensor, torch.Tensor]:
        """A row's full blocks `[heads, tokens, head_dim]` (from whichever tier holds them)."""
        saved = (row.tail_k, row.tail_v)
        empty_k, empty_v = row.tail_k[:, :0], row.tail_v[:, :0]
        row.tail_k, row.tail_v = empty_k, empty_v
        heads, dim = empty_k.shape[0], empty_k.shape[2]
        out = empty_k.new_empty((2, heads, len(row.token_ids), dim))
        try:
            self._append_row(layer, row, empty_k, empty_v, out)
        finally:
            row.tail_k, row.tail_v = saved
        return out[0], out[1]

    def clear(self, layer: int) -> None:
        """Forget every row of `layer` (their blocks age out of the tiers)."""
        self._drop_prefetches(layer)
        self._rows[layer] = []


def _lost(layer: int, missing: int, num_blocks: int) -> LostBlocksError:
    return LostBlocksError(f"layer {layer}: {missing} of its {num_blocks} earlier blocks are in no tier (dropped for "
                           "want of room, or failed verification); give the cache a host or disk tier, or more device "
                           "blocks, and generate again")
