"""TransferEngine: moves blocks between the host/disk/shared tiers off the scheduler's thread.

Reads (onloads, awaited reads) run ahead of writes (spills, awaited writes) on one worker pool.
Onloaded blocks stay pinned until read; spills hold at most `max_inflight_write_bytes`.
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from typing import Any, TypeVar

import torch

from kvtier.errors import KVTierError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.transfer.executor import READ, WRITE, PriorityExecutor
from kvtier.transfer.latency import LatencyStats
from kvtier.transfer.onload import LowerHit, OnloadHandle
from kvtier.types import BlockHash

log = logging.getLogger(__name__)
T = TypeVar("T")


def _log_failure(what: str, tier: TierStore, key: BlockKey, exc: Exception) -> None:
    block = key.block_hash.hex()[:16]
    if isinstance(exc, KVTierError):  # a fault the tier reports on purpose: a miss, no traceback
        log.warning("%s of block %s on %s failed: %s", what, block, tier.kind.value, exc)
    else:  # a bug, or a tier of another layout: keep the traceback
        log.error("%s of block %s on %s failed", what, block, tier.kind.value, exc_info=exc)


def _nbytes(data: torch.Tensor) -> int:
    return data.numel() * data.element_size()


def _unpin_if_cancelled(tier: TierStore, block_hash: BlockHash, future: Future[Any]) -> None:
    if future.cancelled():  # a read that never ran still held its pin
        tier.unpin(block_hash)


_Read = tuple[TierStore, BlockKey, "torch.Tensor | None", "Future[torch.Tensor | None]"]


def _cancel_run(run: list[_Read], job: Future[Any]) -> None:
    """A run's job cancelled before it started (the engine closing): cancel its blocks, which unpins them."""
    if job.cancelled():
        for *_, future in run:
            future.cancel()


INLINE_READ_BYTES = 1 << 20
"""Reads a waiting caller does itself. Below this, handing blocks to the workers and waking the
caller cost more than the reads: TieredCache's onloads in one SmolLM2 generate (10,976 one-layer
blocks of 24.6 KB, ~31 per onload) took 1.25-1.5 s through four workers and 0.77-0.92 s inline,
reads and placement included. A larger restore keeps the workers' parallel reads."""

SPILL_JOB_BYTES = 1 << 20
"""Blocks of one eviction that one worker writes in turn (`spill_many`). The prefill of a SmolLM2
generate spilling 760 one-layer blocks of 24.6 KB to an unsynced disk folder, against
DynamicCache's 0.71-0.85 s: 0.85-0.91 s as one job an eviction, 0.89-0.98 s as four, 1.03-1.12 s
as one a block (benches/bench_hf_cache.py's disk case). Larger evictions keep the workers' parallel
writes, which a synced folder needs."""


class TransferEngine:
    """Asynchronous reads and writes of whole blocks against TierStores, with per-tier latency stats."""

    def __init__(self, num_workers: int = 4, max_inflight_write_bytes: int = 256 << 20,
                 inline_read_bytes: int = INLINE_READ_BYTES) -> None:
        self._executor = PriorityExecutor(num_workers, name="kvtier-transfer")
        self.num_workers = num_workers
        self.inline_read_bytes = inline_read_bytes
        self.max_inflight_write_bytes = max_inflight_write_bytes
        self._inflight_write_bytes = 0
        self._write_room = threading.Condition()
        self.latency: dict[str, LatencyStats] = {}
        self._latency_lock = threading.Lock()
        self.failed_reads = 0  # onloads that raised (each became a miss)
        self.failed_writes = 0  # spills that raised (each block was not stored)
        self._failures_lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        # NOTE: spilled blocks stay servable from the engine's copy until their write lands.
        self._inflight: dict[BlockHash, tuple[TierStore, BlockKey, torch.Tensor]] = {}
        self._pending_lock = threading.Lock()

    def _latency(self, tier: TierStore, op: str) -> LatencyStats:
        name = f"{tier.kind.value}.{op}"
        with self._latency_lock:
            return self.latency.setdefault(name, LatencyStats())

    def _track(self, future: Future[T]) -> Future[T]:
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._untrack)
        return future

    def _untrack(self, future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _timed(self, tier: TierStore, op: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self._latency(tier, op).record(time.perf_counter() - start)

    def _read_one(self, tier: TierStore, key: BlockKey, out: torch.Tensor | None) -> torch.Tensor | None | Exception:
        """`tier.get`, or the exception it raised, counted and logged (OnloadHandle.wait makes it a miss)."""
        try:
            return tier.get(key, out)
        except Exception as exc:
            with self._failures_lock:
                self.failed_reads += 1
            _log_failure("onload", tier, key, exc)
            return exc

    def _record_batch(self, tier: TierStore, op: str, start: float, count: int) -> None:
        """A batch of `count` blocks begun at `start`: its time shared evenly, so latency stays per block."""
        self._latency(tier, op).record_many((time.perf_counter() - start) / max(count, 1), count)

    def _submit(self, priority: int, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._track(self._executor.submit(priority, fn, *args))

    def _read_run(self, run: list[_Read]) -> None:
        """Read a run's blocks into their futures, each tier's consecutive blocks as one `get_many`;
        a block cancelled before the run starts is skipped (its done-callback released the pin)."""
        live = [read for read in run if read[3].set_running_or_notify_cancel()]
        for tier, group in itertools.groupby(live, key=lambda read: read[0]):
            self._read_batch(tier, list(group))

    def _read_batch(self, tier: TierStore, reads: list[_Read]) -> None:
        """One tier's blocks read as one batch into their futures (see `_get_batch`)."""
        outcomes = self._get_batch(tier, [key for _, key, _, _ in reads], [slot for _, _, slot, _ in reads])
        for (_, _, _, future), outcome in zip(reads, outcomes):
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _get_batch(self, tier: TierStore, keys: list[BlockKey],
                   slots: list[torch.Tensor | None]) -> list[torch.Tensor | None | Exception]:
        """Pinned blocks of one tier read as one `get_many`, each unpinned once read. A batch that
        raises is read again block by block, so only the blocks that raise fail (each a counted,
        logged miss) and the run before them is kept."""
        start = time.perf_counter()
        outcomes: list[torch.Tensor | None | Exception]
        try:
            try:
                outcomes = list(tier.get_many(keys, slots))
            except Exception:
                outcomes = [self._read_one(tier, key, slot) for key, slot in zip(keys, slots)]
        finally:
            tier.unpin_many(key.block_hash for key in keys)
        self._record_batch(tier, "read", start, len(keys))
        return outcomes

    def _read_now(self, found: Sequence[LowerHit],
                  landing: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor | None]:
        """The blocks of `found` read in the caller's thread, each tier's consecutive blocks as one
        batch, up to the batch with the first miss (None; a failed read is one): the blocks after it
        are released unread. No futures: a waiting caller's small onload (one
        TieredCache layer: ~31 blocks of 24 KB) paid more for them than for the reads."""
        def to_read(hit: tuple[int, LowerHit]) -> TierStore | None:
            return hit[1].tier if hit[1].data is None else None  # NOTE: a copy in hand (data) needs no tier

        results: list[torch.Tensor | None] = []
        missed = False
        for tier, group in itertools.groupby(enumerate(found), key=to_read):
            hits = list(group)
            if missed:  # NOTE: a miss ended the prefix: the blocks after it are released, not read
                if tier is not None:
                    tier.unpin_many(hit.key.block_hash for _, hit in hits)
                continue
            slots = [landing[i] if landing is not None else None for i, _ in hits]
            if tier is None:
                for (_, hit), slot in zip(hits, slots):
                    assert hit.data is not None, f"a lower hit of block {hit.key.block_hash.hex()[:16]} without data"
                    results.append(hit.data if slot is None else slot.copy_(hit.data))
                continue
            outcomes = self._get_batch(tier, [hit.key for _, hit in hits], slots)
            results += [None if isinstance(outcome, Exception) else outcome for outcome in outcomes]
            missed = any(result is None for result in results[-len(outcomes):])
        return results

    def read_planned(self, tier: TierStore, plan: object, outs: torch.Tensor) -> bool:
        """A tier's planned read (`TierStore.read_planned`) in the caller's thread, timed as a read
        batch is; False: not every block was read (nothing served)."""
        start = time.perf_counter()
        done = tier.read_planned(plan, outs)
        if done:
            self._record_batch(tier, "read", start, outs.shape[0])
        return done

    def onload(self, found: Sequence[LowerHit], landing: torch.Tensor | Sequence[torch.Tensor] | None = None,
               waiting: bool = False) -> OnloadHandle:
        """Read pinned blocks from their tiers in parallel; each is unpinned when its read ends
        or when it is cancelled before it starts. In-flight spills are served from their copy.

        `waiting`: the caller waits for the reads at once; then up to `inline_read_bytes` of them
        are read in its own thread, before this returns (no hand-off to the workers).

        `landing` `[at least len(found), *block_shape]`, or one tensor per block: block i is read
        into `landing[i]` (one buffer for the request, so placing the blocks on the device needs no
        gathering copy, or the blocks' own pages of a CPU pool, so it needs none at all); else each
        read allocates its own tensor. The handle keeps it for whoever recycles it.
        """
        if waiting and sum(hit.tier.layout.page_size_bytes for hit in found
                           if hit.tier is not None and hit.data is None) <= self.inline_read_bytes:
            return OnloadHandle(list(found), [], landing, results=self._read_now(found, landing))
        futures: list[Future[torch.Tensor | None]] = []
        reads: list[_Read] = []
        for i, (tier, key, data) in enumerate(found):
            slot = landing[i] if landing is not None else None
            future: Future[torch.Tensor | None] = Future()
            if data is not None:
                future.set_result(data if slot is None else slot.copy_(data))
            else:
                assert tier is not None, f"a lower hit of block {key.block_hash.hex()[:16]} with neither tier nor data"
                future.add_done_callback(functools.partial(_unpin_if_cancelled, tier, key.block_hash))
                reads.append((tier, key, slot, future))
            futures.append(future)
        # NOTE: one job per worker, each reading a run of the prefix in order: a job per block cost
        # the scheduler's thread about 35 us of Python each (9 ms for a 4k-token SmolLM2 prefix).
        per_job = -(-len(reads) // self.num_workers) if reads else 1
        for start in range(0, len(reads), per_job):
            run = reads[start:start + per_job]
            self._submit(READ, self._read_run, run).add_done_callback(functools.partial(_cancel_run, run))
        return OnloadHandle(list(found), futures, landing)

    def inflight(self, key: BlockKey) -> LowerHit | None:
        """The block if a spill of it is queued or running (its tier cannot serve it yet)."""
        return self.inflight_many([key])[0]

    def inflight_many(self, keys: Sequence[BlockKey]) -> list[LowerHit | None]:
        """`inflight` of each key, under one lock."""
        with self._pending_lock:
            entries = [self._inflight.get(key.block_hash) for key in keys]
        # NOTE: another namespace or token ids under the same hash is not this block
        return [None if entry is None or entry[1] != key else LowerHit(entry[0], key, entry[2])
                for key, entry in zip(keys, entries)]

    def read(self, tier: TierStore, key: BlockKey, out: torch.Tensor | None = None) -> Future[torch.Tensor | None]:
        """Read one block at read priority, for a caller that waits on the result.

        The future holds the block (`out` when given) or None on a miss, or raises what `tier.get`
        raised. Nothing is pinned: a block evicted before the read runs is a miss.
        """
        return self._submit(READ, self._timed, tier, "read", functools.partial(tier.get, key, out))

    def read_many(self, tier: TierStore, keys: Sequence[BlockKey],
                  outs: Sequence[torch.Tensor | None] | None = None) -> Future[list[torch.Tensor | None]]:
        """Read blocks in order as one job (one hand-off to a worker); see `read`."""
        targets = list(outs) if outs is not None else [None] * len(keys)
        if len(targets) != len(keys):
            raise ValueError(f"read_many got {len(keys)} keys and {len(targets)} output tensors")
        return self._submit(READ, self._get_run, tier, list(keys), targets)

    def write(self, tier: TierStore, key: BlockKey, data: torch.Tensor) -> Future[None]:
        """Store one block at write priority; the future raises what `tier.put` raised
        (TierFullError, TierIOError, ValueError). Unlike `spill`: no copy (keep `data` unchanged
        until the future ends), no back-pressure wait, and a failure is the caller's, not counted."""
        return self._submit(WRITE, self._timed, tier, "write", functools.partial(tier.put, key, data))

    def write_many(self, tier: TierStore, keys: Sequence[BlockKey], datas: Sequence[torch.Tensor]) -> Future[None]:
        """Store blocks in order as one job; every put is attempted, then the first failure is raised."""
        if len(keys) != len(datas):
            raise ValueError(f"write_many got {len(keys)} keys and {len(datas)} tensors")
        return self._submit(WRITE, self._put_run, tier, list(keys), list(datas))

    def contains(self, tier: TierStore, block_hash: BlockHash) -> Future[bool]:
        """`tier.contains` at read priority (a lookup may touch the disk or the network)."""
        return self._submit(READ, tier.contains, block_hash)

    def _get_run(self, tier: TierStore, keys: list[BlockKey],
                 outs: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        start = time.perf_counter()
        try:
            return tier.get_many(keys, outs)
        finally:
            self._record_batch(tier, "read", start, len(keys))

    def _put_run(self, tier: TierStore, keys: list[BlockKey], datas: list[torch.Tensor]) -> None:
        first: Exception | None = None
        for key, data in zip(keys, datas):
            try:
                self._timed(tier, "write", functools.partial(tier.put, key, data))
            except Exception as exc:  # raised once the rest of the run has been attempted
                first = first or exc
        if first is not None:
            raise first

    def spill(self, tier: TierStore, key: BlockKey, data: torch.Tensor) -> Future[bool]:
        """Write a block the engine now owns (pass a copy); blocks the caller when too much is in flight.

        The future's result says whether the tier stored it; failures are counted and logged.
        """
        nbytes = _nbytes(data)
        entries = self._take_write_room(tier, [key], [data], nbytes)
        future = self._submit(WRITE, self._timed_put, tier, key, data)
        future.add_done_callback(lambda _f: self._finish_writes(entries, nbytes))
        return future

    def spill_many(self, tier: TierStore, keys: Sequence[BlockKey], datas: Sequence[torch.Tensor],
                   job_bytes: int = SPILL_JOB_BYTES) -> list[Future[list[bool]]]:
        """`spill` of several blocks (a device eviction's) as jobs of up to `job_bytes` (at least one
        block each), each writing its blocks in turn: one hand-off to a worker per job instead of
        one per block. Each job's future says which of its blocks the tier stored.
        """
        if len(keys) != len(datas):
            raise ValueError(f"spill_many got {len(keys)} keys and {len(datas)} tensors")
        futures, start = [], 0
        while start < len(keys):
            stop, nbytes = start, 0
            while stop < len(keys) and (stop == start or nbytes + _nbytes(datas[stop]) <= job_bytes):
                nbytes += _nbytes(datas[stop])
                stop += 1
            run_keys, run_datas = list(keys[start:stop]), list(datas[start:stop])
            entries = self._take_write_room(tier, run_keys, run_datas, nbytes)
            future = self._submit(WRITE, self._timed_puts, tier, run_keys, run_datas)
            future.add_done_callback(functools.partial(self._finish_done, entries, nbytes))
            futures.append(future)
            start = stop
        return futures

    def _take_write_room(self, tier: TierStore, keys: list[BlockKey], datas: list[torch.Tensor],
                         nbytes: int) -> list[tuple[TierStore, BlockKey, torch.Tensor]]:
        """Wait until `nbytes` more may be in flight, then serve the blocks from their copies until written."""
        with self._write_room:  # NOTE: a job larger than the budget still goes, alone
            self._write_room.wait_for(lambda: self._inflight_write_bytes == 0 or
                                      self._inflight_write_bytes + nbytes <= self.max_inflight_write_bytes)
            self._inflight_write_bytes += nbytes
        entries = [(tier, key, data) for key, data in zip(keys, datas)]
        with self._pending_lock:
            for entry in entries:
                self._inflight[entry[1].block_hash] = entry
        return entries

    def _finish_done(self, entries: list[tuple[TierStore, BlockKey, torch.Tensor]], nbytes: int,
                     _future: Future[Any]) -> None:
        self._finish_writes(entries, nbytes)

    def _finish_writes(self, entries: list[tuple[TierStore, BlockKey, torch.Tensor]], nbytes: int) -> None:
        with self._pending_lock:
            for entry in entries:
                if self._inflight.get(entry[1].block_hash) is entry:
                    del self._inflight[entry[1].block_hash]
        self._release_write(nbytes)

    def _release_write(self, nbytes: int) -> None:
        with self._write_room:
            self._inflight_write_bytes -= nbytes
            self._write_room.notify_all()

    def _timed_put(self, tier: TierStore, key: BlockKey, data: torch.Tensor) -> bool:
        try:
            self._timed(tier, "write", functools.partial(tier.put, key, data))
            return True
        except Exception as exc:  # NOTE: nobody reads a spill's future; what is not counted here is lost
            with self._failures_lock:
                self.failed_writes += 1
            _log_failure("spill", tier, key, exc)
            return False

    def _timed_puts(self, tier: TierStore, keys: list[BlockKey], datas: list[torch.Tensor]) -> list[bool]:
        return [self._timed_put(tier, key, data) for key, data in zip(keys, datas)]

    def flush(self) -> None:
        """Wait until every read and write submitted so far has finished or been cancelled."""
        with self._pending_lock:
            pending = list(self._pending)
        wait(pending)

    def stats(self) -> dict[str, dict[str, float | int | None]]:
        with self._latency_lock:
            return {name: stats.as_dict() for name, stats in self.latency.items()}

    def close(self) -> None:
        self._executor.shutdown(wait=True)
