"""TieredKVCache: the block manager, the device pool and the tiers below it, wired together.

Build one from a KVTierConfig (`TieredKVCache.from_config`). Device evictions are offloaded down
(write-back: into a tier whose puts are memory copies on the caller's thread, else through the
transfer engine). A prompt whose prefix continues in a lower tier gets those blocks pinned and
read in the background; `finish_onload` puts them on the device. All bookkeeping stays on the
caller's thread; only bytes move on the engine's workers.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvtier.block.block import Block
from kvtier.block.manager import BlockManager, SeqState
from kvtier.cache_stats import CacheStats
from kvtier.config import KVLayout, KVTierConfig, RemoteTierConfig, SharedTierConfig
from kvtier.errors import KVTierError
from kvtier.parallel.agree import Agreement
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.device import DevicePool
from kvtier.tiers.host import HostStore
from kvtier.transfer.engine import TransferEngine
from kvtier.transfer.landing import LandingBuffers
from kvtier.transfer.onload import LowerHit, OnloadHandle
from kvtier.transfer.staging import DeviceToHost
from kvtier.types import BlockHash, Namespace, SeqId, TierKind


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """A tier's plan to read a prefix's blocks (TieredKVCache.plan_read)."""

    tier: TierStore
    plan: object
    num_blocks: int


class TieredKVCache:
    """Allocates KV blocks to sequences and keeps evicted prefixes in slower tiers.

    Args:
        layout: the KV layout of every tier.
        num_device_blocks: size of the device pool.
        lower_tiers: fastest first (host, disk, shared); each one's evictions spill to the next.
        device: where the pool lives.
        write_through: tiers (usually shared ones) that get every newly computed block at once,
            so other hosts can hit it, instead of only on eviction.
        engine: the transfer engine to use (one is made and owned otherwise).
        landing_bytes: host memory for onloads to land in, allocated and touched now (see TransferConfig).
        prefault_pool: make every page of a CPU pool now (see DeviceTierConfig.prefault).
        agreement: how the ranks of a parallel layout agree on what their tiers served
            (kvtier/parallel/agree.py); a single process needs none.
        read_tiers: tiers that are only read, after `lower_tiers` (other parallel layouts' objects:
            tiers/disk/other_layouts.py); nothing is spilled, persisted or written to them.

    Raises:
        ValueError: a tier stores blocks of another layout.
    """

    def __init__(self, layout: KVLayout, num_device_blocks: int, lower_tiers: Sequence[TierStore] = (),
                 device: torch.device | str = "cpu", *, write_through: Sequence[TierStore] = (),
                 engine: TransferEngine | None = None, landing_bytes: int = 0,
                 prefault_pool: bool = True, agreement: Agreement | None = None,
                 read_tiers: Sequence[TierStore] = ()) -> None:
        _check_layouts(layout, "tier", lower_tiers)
        _check_layouts(layout, "read tier", read_tiers)
        _check_layouts(layout, "write_through tier", write_through)
        self.layout = layout
        self.pool = DevicePool(layout, num_device_blocks, device, prefault=prefault_pool)
        self._staging = DeviceToHost(self.pool)
        self._landing = LandingBuffers(layout, pin=self.pool.device.type == "cuda",
                                       prefault_blocks=landing_bytes // layout.page_size_bytes)
        self.manager = BlockManager(num_device_blocks, layout.block_size, eviction_hook=self._offload)
        self.tiers = list(lower_tiers)
        self.read_tiers = list(read_tiers)
        self.write_through = list(write_through)
        self.engine = engine or TransferEngine()
        self._owns_engine = engine is None
        for upper, lower in zip(self.tiers, self.tiers[1:]):
            upper.set_eviction_hook(functools.partial(self._spill_copy, lower))
        self._onloads: dict[SeqId, OnloadHandle] = {}
        self._hits: dict[SeqId, dict[TierKind, int]] = {}  # per live sequence: cached blocks by tier
        self.stats = CacheStats()
        self.agreement = agreement or Agreement()

    @classmethod
    def from_config(cls, config: KVTierConfig, agreement: Agreement | None = None,
                    read_tiers: Sequence[TierStore] = ()) -> TieredKVCache:
        """The cache `config` describes, with its tiers opened (folders warm-restarted) and its own engine
        (`agreement`, `read_tiers`: see the class).

        Raises:
            TierIOError: a folder tier's path cannot be used.
        """
        from kvtier.tiers.build import open_tier

        tiers: list[TierStore] = []
        try:
            for tier_config in config.tiers:
                tiers.append(open_tier(config.layout, tier_config))
        except BaseException:
            for tier in tiers:
                tier.close()
            raise
        write_through = [t for t, c in zip(tiers, config.tiers)
                         if isinstance(c, (SharedTierConfig, RemoteTierConfig)) and c.write_through]
        engine = TransferEngine(config.transfer.num_workers, config.transfer.max_inflight_write_bytes)
        cache = cls(config.layout, config.device.num_blocks, tiers, config.device.device,
                    write_through=write_through, engine=engine, landing_bytes=config.transfer.landing_bytes,
                    prefault_pool=config.device.prefault, agreement=agreement, read_tiers=read_tiers)
        cache._owns_engine = True
        return cache

    def key_of(self, block: Block) -> BlockKey:
        assert block.block_hash is not None and block.namespace is not None, f"{block} is not registered"
        return BlockKey(block.namespace, block.block_hash, block.token_ids(self.layout.block_size))

    def allocate(self, seq_id: SeqId, token_ids: Sequence[int], namespace: Namespace,
                 extra_keys: bytes = b"", *, wait: bool = True,
                 block_hashes: list[BlockHash] | None = None) -> SeqState:
        """Blocks for a new prompt: device prefix hits, then lower-tier hits, then fresh blocks.

        Lower-tier hits are read in the background; with `wait=False` call `finish_onload` before
        the forward pass. `seq.num_cached_tokens` then says how many leading tokens need no compute.
        `block_hashes`: the prompt's full-block hashes (`manager.hash_tokens`) where the caller keeps them.
        """
        hashes = block_hashes if block_hashes is not None else self.manager.hash_tokens(token_ids, namespace,
                                                                                        extra_keys)
        max_hits = self.manager.max_hit_blocks(len(token_ids))
        device_hits = self.manager.find_cached_prefix(hashes, len(token_ids))
        num_device_hits = len(device_hits)
        # NOTE: find and pin lower-tier hits before allocating, since allocating evicts device
        # blocks and the cascade of write-backs could otherwise push these very blocks out.
        found = self._find_lower(namespace, token_ids, hashes, num_device_hits, max_hits)
        agreed = self.agreement.min([len(found)])[0]  # NOTE: a block one rank lacks is recomputed by all
        _unpin(found[agreed:])
        found = found[:agreed]
        try:
            seq = self.manager.allocate(seq_id, token_ids, namespace, block_hashes=hashes, extra_keys=extra_keys,
                                        cached_prefix=device_hits)
        except BaseException:
            _unpin(found)
            raise
        self.stats.lookup_blocks += max_hits
        self.stats.hit_blocks[TierKind.DEVICE] += num_device_hits
        self._hits[seq_id] = {TierKind.DEVICE: num_device_hits} if num_device_hits else {}
        if found:
            self._onloads[seq_id] = self.engine.onload(found, self._landing_for(seq, len(found)), waiting=wait)
            if wait:
                self.finish_onload(seq_id)
        return seq

    def read_into(self, namespace: Namespace, token_ids: Sequence[int], block_hashes: list[BlockHash],
                  outs: Sequence[torch.Tensor]) -> int:
        """Read-through: the leading blocks of a prefix, from whichever tier holds each (the device pool
        included), into `outs` (a block-shaped CPU tensor each, strided or not), taking no device block
        and moving none up. Returns how many leading blocks were served; the one after them is in no
        tier, or failed verification (counted, as every onload miss is).

        For a caller that needs a prefix's bytes once rather than its blocks on the device: a layer's
        K/V gathered each decode step while other layers hold the pool (LayerStore). Promoting those
        blocks would only evict the next layer's.
        """
        found = self._find_lower(namespace, token_ids, block_hashes, 0, min(len(outs), len(block_hashes)))
        agreed = self.agreement.min([len(found)])[0]
        _unpin(found[agreed:])
        if not agreed:
            return 0
        handle = self.engine.onload(found[:agreed], list(outs[:agreed]), waiting=True)
        loaded = handle.wait()
        handle.settle()  # NOTE: no read past a failed one may still write into the caller's buffers
        loaded = loaded[:self.agreement.min([len(loaded)])[0]]
        for out, block in zip(outs, loaded):
            if block.data_ptr() != out.data_ptr():
                out.copy_(block)
        served = handle.found[:len(loaded)]
        for hit in served:
            self.stats.hit_blocks[hit.tier.kind if hit.tier is not None else TierKind.DEVICE] += 1
        self.stats.lookup_blocks += len(outs)
        self.stats.onloaded_bytes += sum(hit.tier is not None for hit in served) * self.layout.page_size_bytes
        return len(loaded)

    def plan_read(self, namespace: Namespace, token_ids: Sequence[int],
                  block_hashes: list[BlockHash]) -> PlannedRead | None:
        """A plan for `read_planned`: the blocks of a prefix read through again and again (a layer's
        K/V each decode step) with their per-block work done once, when one tier holds them all and
        can plan (the disk tier, for objects it verified before). None otherwise, and always across
        parallel ranks: a planned read that fails on one rank only would set the ranks' agreement
        calls apart."""
        if type(self.agreement) is not Agreement or not block_hashes:
            return None
        keys = self._keys(namespace, token_ids, block_hashes, 0, len(block_hashes))
        for tier in (*self.tiers, *self.read_tiers):
            plan = tier.plan_reads(keys)
            if plan is not None:
                return PlannedRead(tier, plan, len(keys))
        return None

    def read_planned(self, plan: PlannedRead, outs: torch.Tensor) -> bool:
        """`read_into` by a `plan_read` plan, all or nothing: every block into `outs[i]` (`[n,
        *block_shape]` on the CPU, strided or not, n the plan's) and counted as read_into counts
        it, or False and nothing served (`outs` undefined): read_into then, which says what is wrong
        (a block gone from the tier, or damaged) and makes the next plan."""
        if not self.engine.read_planned(plan.tier, plan.plan, outs):
            return False
        self.stats.hit_blocks[plan.tier.kind] += plan.num_blocks
        self.stats.lookup_blocks += plan.num_blocks
        self.stats.onloaded_bytes += plan.num_blocks * self.layout.page_size_bytes
        return True

    def _landing_for(self, seq: SeqState, num_blocks: int) -> torch.Tensor | list[torch.Tensor]:
        """Where a sequence's next `num_blocks` lower-tier hits are read: on CPU their own pages in the
        pool (one copy in all, the read itself), elsewhere a host buffer they are then copied up from."""
        if self.pool.device.type == "cpu":
            start = seq.num_registered_blocks
            return self.pool.block_pages(seq.block_ids[start:start + num_blocks])
        return self._landing.take(num_blocks)

    def _find_lower(self, namespace: Namespace, token_ids: Sequence[int], hashes: list[BlockHash],
                    start: int, stop: int) -> list[LowerHit]:
        """The run of blocks [start, ...) found past the device prefix: pinned in the tier holding
        it, still being spilled (served from the engine's copy), or in the device pool after all
        (a block whose predecessors left it: a copy of its pages, taken now, before allocating
        can evict it; copying leaves its place in the pool's eviction order as it was).

        The engine's spills and each tier's own index are asked once for the whole range (one lock
        each, not one a block: a decode step reads every layer's prefix through here); a block no
        tier knows is asked of the tiers one by one (`_pin_in_tier`), which may look further. Pins
        past the first block found nowhere are released before this returns.
        """
        cached = self.manager.allocator.cached
        keys = self._keys(namespace, token_ids, hashes, start, stop)
        # NOTE: the spills in flight first: asked after a tier said no, a spill that finished in between
        # (a round trip to a remote tier is long enough) would be in neither, and the block lost
        spills = self.engine.inflight_many(keys)
        on_device = [cached.get(key.block_hash) for key in keys]
        pinned: list[TierStore | None] = [None] * len(keys)
        for tier in (*self.tiers, *self.read_tiers):
            ask = [i for i in range(len(keys)) if on_device[i] is None and spills[i] is None and pinned[i] is None]
            if not ask:
                break
            for i, held in zip(ask, tier.pin_known([keys[i].block_hash for i in ask])):
                if held:
                    pinned[i] = tier
        found: list[LowerHit] = []
        try:
            for key, block, spill, holder in zip(keys, on_device, spills, pinned):
                if block is not None:
                    found.append(LowerHit(None, key, self.pool.block_pages([block.block_id])[0].clone()))
                    continue
                hit = spill or (LowerHit(holder, key) if holder is not None else self._pin_in_tier(key))
                if hit is None:
                    break
                found.append(hit)
        except BaseException:  # NOTE: a pin left behind would keep its block from eviction for good
            _unpin(found)
            _unpin_rest(keys, pinned, len(found))
            raise
        _unpin_rest(keys, pinned, len(found) + 1)  # NOTE: the block at len(found) is the one found nowhere
        return found

    def _keys(self, namespace: Namespace, token_ids: Sequence[int], hashes: list[BlockHash], start: int,
              stop: int) -> list[BlockKey]:
        """The keys of blocks [start, stop) of a prefix."""
        bs = self.layout.block_size
        return [BlockKey(namespace, hashes[i], tuple(token_ids[i * bs:(i + 1) * bs])) for i in range(start, stop)]

    def _pin_in_tier(self, key: BlockKey) -> LowerHit | None:
        for tier in (*self.tiers, *self.read_tiers):
            if tier.pin_if_held(key.block_hash):
                return LowerHit(tier, key)
        return None

    def is_onloading(self, seq_id: SeqId) -> bool:
        return seq_id in self._onloads

    def onload_ready(self, seq_id: SeqId) -> bool:
        """Whether `finish_onload(seq_id)` would return without waiting (no reads, or all done)."""
        handle = self._onloads.get(seq_id)
        return handle is None or handle.done()

    def onloads_ready(self, seq_ids: Sequence[SeqId]) -> list[bool]:
        """`onload_ready` of each sequence, true only where it is true on every rank (a scheduler's
        view: every rank must place the same sequences in the same step)."""
        return [bool(v) for v in self.agreement.min([int(self.onload_ready(s)) for s in seq_ids])]

    def cached_blocks_by_tier(self, seq_id: SeqId) -> dict[TierKind, int]:
        """How many of a live sequence's leading blocks each tier served at allocation."""
        return dict(self._hits.get(seq_id, {}))

    def finish_onload(self, seq_id: SeqId, timeout_s: float | None = None) -> int:
        """Wait for a sequence's lower-tier reads, place them on the device; returns blocks onloaded.

        A block that fails verification ends the run: it and what follows are recomputed.
        `timeout_s` bounds the wait for each block; on a CPU pool, whose pages the reads land in,
        reads already running are still waited for, so none writes into a page being computed.
        """
        handle = self._onloads.pop(seq_id, None)
        if handle is None:
            return 0
        loaded = handle.wait(timeout_s)
        loaded = loaded[:self.agreement.min([len(loaded)])[0]]  # NOTE: a read one rank failed is redone by all
        if _lands_in_pool(handle):
            handle.settle()  # NOTE: a read past a failed one may still run, into pages about to be computed
        if not loaded:
            self._give_back(handle)
            return 0
        seq = self.manager.seq(seq_id)
        start = seq.num_registered_blocks
        buffer = handle.landing
        if isinstance(buffer, torch.Tensor) or buffer is None:  # NOTE: not _lands_in_pool, by type, for mypy
            in_place = buffer is not None and all(t.data_ptr() == buffer[i].data_ptr() for i, t in enumerate(loaded))
            data = buffer[:len(loaded)] if buffer is not None and in_place else torch.stack(loaded)
            self.pool.write_blocks(seq.block_ids[start:start + len(loaded)], data)
        else:  # read into the pool's pages: only a block a tier handed back elsewhere is copied
            for page, block in zip(buffer, loaded):
                if block.data_ptr() != page.data_ptr():
                    page.copy_(block)
        self._give_back(handle)
        hits = self._hits.setdefault(seq_id, {})
        for hit in handle.found[:len(loaded)]:
            kind = hit.tier.kind if hit.tier is not None else TierKind.DEVICE
            self.stats.hit_blocks[kind] += 1
            hits[kind] = hits.get(kind, 0) + 1
        self.stats.onloaded_bytes += len(loaded) * self.layout.page_size_bytes
        self.manager.mark_computed(seq_id, (start + len(loaded)) * self.layout.block_size)
        seq.num_cached_tokens = seq.num_registered_blocks * self.layout.block_size
        return len(loaded)

    def _give_back(self, handle: OnloadHandle) -> None:
        """Recycle a handle's landing buffer once no read can still write into it."""
        if isinstance(handle.landing, torch.Tensor) and handle.done():  # a host buffer, not the pool's blocks
            self._landing.give_back(handle.landing, self.pool.device)

    def _offload(self, blocks: list[Block]) -> None:
        """Eviction hook of the device pool: copy the blocks out before they are reused."""
        if not self.tiers:
            self.stats.dropped_blocks += len(blocks)
            return
        first = self.tiers[0]
        # NOTE: objects are content-named and immutable: a block the first tier holds (one read back
        # up and evicted again) has its bytes there already, so it is not copied or written again
        blocks = [b for b in blocks if b.block_hash is None or not first.contains(b.block_hash)]
        if not blocks:
            return
        data = self._staging.copy_out([b.block_id for b in blocks])  # [n, *block_shape], ours now
        if not first.puts_inline:
            self.engine.spill_many(first, [self.key_of(block) for block in blocks], list(data))
            self.stats.offloaded_blocks += len(blocks)
            self.stats.offloaded_bytes += len(blocks) * self.layout.page_size_bytes
            return
        for block, block_data in zip(blocks, data):
            try:
                first.put(self.key_of(block), block_data)
            except KVTierError:  # every host slot pinned by transfers: the next tier down keeps it, if any
                if len(self.tiers) < 2:
                    self.stats.dropped_blocks += 1
                    continue
                self.engine.spill(self.tiers[1], self.key_of(block), block_data)
            self.stats.offloaded_blocks += 1
            self.stats.offloaded_bytes += self.layout.page_size_bytes

    def _spill_copy(self, tier: TierStore, key: BlockKey, data: torch.Tensor) -> None:
        """Eviction hook of a lower tier: its slot is reused at once, so the engine gets a copy."""
        self.engine.spill(tier, key, data.clone())

    def mark_computed(self, seq_id: SeqId, num_tokens: int) -> list[Block]:
        """Register the sequence's full computed blocks (write-through tiers get a copy)."""
        if seq_id in self._onloads:
            raise RuntimeError(f"sequence {seq_id!r} has an onload in flight; call finish_onload first")
        registered = self.manager.mark_computed(seq_id, num_tokens)
        if registered and self.write_through:
            data = self._staging.copy_out([b.block_id for b in registered])
            for block, block_data in zip(registered, data):
                for tier in self.write_through:
                    self.engine.spill(tier, self.key_of(block), block_data)
        return registered

    def append(self, seq_id: SeqId, token_ids: Sequence[int]) -> list[Block]:
        return self.manager.append(seq_id, token_ids)

    def free(self, seq_id: SeqId, evict_first: bool = False) -> None:
        """Release a sequence, cancelling any reads still queued for it (`evict_first`: see BlockManager.free)."""
        handle = self._onloads.pop(seq_id, None)
        if handle is not None:
            if not _lands_in_pool(handle):
                handle.cancel()
                self._give_back(handle)
            else:  # NOTE: reads land in the sequence's own pages: none may still write once they are free
                handle.settle()
        self._hits.pop(seq_id, None)
        self.manager.free(seq_id, evict_first)

    def persist(self, chunk_blocks: int = 64) -> int:
        """Copy every block only memory holds (device pool, host RAM) into the first tier that outlives
        this process (disk, shared or remote), and wait for the writes: a restart over the same tiers
        then finds all of it. A graceful shutdown calls this before `close`. Returns blocks written.
        """
        durable = [tier for tier in self.tiers if tier.kind is not TierKind.HOST]
        if not durable:
            return 0
        written: set[BlockHash] = set()

        def write(key: BlockKey, data: torch.Tensor) -> None:
            if key.block_hash not in written and not any(t.contains(key.block_hash) for t in durable):
                self.engine.spill(durable[0], key, data)
                written.add(key.block_hash)

        for tier in self.tiers:
            if isinstance(tier, HostStore):
                for key, data in tier.entries():
                    write(key, data)
        blocks = [b for b in self.manager.allocator.cached.values() if b.block_hash not in written]
        for start in range(0, len(blocks), chunk_blocks):
            chunk = blocks[start:start + chunk_blocks]
            for block, data in zip(chunk, self._staging.copy_out([b.block_id for b in chunk])):
                write(self.key_of(block), data)
        self.flush()
        return len(written)

    def flush(self) -> None:
        """Wait for every write-back and write-through submitted so far."""
        self.engine.flush()

    def close(self) -> None:
        """Finish every write in flight, then release the engine (if ours) and every tier."""
        self.flush()
        if self._owns_engine:
            self.engine.close()
        for tier in dict.fromkeys(self.tiers + self.write_through + self.read_tiers):
            tier.close()


def _unpin_rest(keys: Sequence[BlockKey], pinned: Sequence[TierStore | None], start: int) -> None:
    """Release the index pins `_find_lower` took for blocks [start, ...) it does not return."""
    for tier in dict.fromkeys(t for t in pinned[start:] if t is not None):
        tier.unpin_many(keys[i].block_hash for i in range(start, len(keys)) if pinned[i] is tier)


def _unpin(hits: Sequence[LowerHit]) -> None:
    """Release the tier pins of lower-tier hits that will not be read."""
    for hit in hits:
        if hit.tier is not None and hit.data is None:
            hit.tier.unpin(hit.key.block_hash)


def _lands_in_pool(handle: OnloadHandle) -> bool:
    """Whether a handle's reads land in the device pool's own blocks (a CPU pool; see `_landing_for`)
    rather than in a host buffer copied up afterwards."""
    return handle.landing is not None and not isinstance(handle.landing, torch.Tensor)


def _check_layouts(layout: KVLayout, what: str, tiers: Sequence[TierStore]) -> None:
    """ValueError naming the first tier whose blocks are not of `layout`, and how the layouts differ."""
    for i, tier in enumerate(tiers):
        if tier.layout != layout:
            fields = [name for name, value in layout.to_dict().items() if tier.layout.to_dict()[name] != value]
            raise ValueError(f"{what} {i} ({type(tier).__name__}) stores blocks of {tier.layout}, but the cache's "
                             f"layout is {layout} (they differ in {', '.join(fields)}); build every tier with the "
                             "cache's layout")
