"""AsyncTier: the asyncio API of any TierStore, awaiting the TransferEngine's futures.

NOTE: no executor of its own: every call is a job on a TransferEngine's read-first workers. Pass
the engine a TieredKVCache uses and the loop's reads queue ahead of the cache's spills too.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait
from typing import Any, TypeVar, cast

import torch

from kvtier.config import KVLayout, TierConfig, check_positive_int
from kvtier.tiers.base import BlockKey, TierStats, TierStore
from kvtier.transfer.engine import TransferEngine
from kvtier.types import BlockHash

T = TypeVar("T")
DEFAULT_CONCURRENCY = 8


class AsyncTier:
    """Awaitable put/get over a TierStore; reads are served ahead of queued writes.

    The store stays usable synchronously from other threads; both share one index, budget and stats.

    Args:
        store: the tier; closed by `close`.
        max_concurrency: the most engine jobs one batch call splits into, and the number of
            workers of the engine made when none is given.
        engine: shared with other users (not closed here); one is made and owned otherwise.
    """

    def __init__(self, store: TierStore, *, max_concurrency: int = DEFAULT_CONCURRENCY,
                 engine: TransferEngine | None = None) -> None:
        check_positive_int("AsyncTier", "max_concurrency", max_concurrency)
        self.store = store
        self.max_concurrency = max_concurrency
        self.engine = engine or TransferEngine(num_workers=max_concurrency)
        self._owns_engine = engine is None
        self._jobs: set[Future[Any]] = set()
        self._jobs_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, layout: KVLayout, config: TierConfig, *,
             max_concurrency: int = DEFAULT_CONCURRENCY) -> AsyncTier:
        """The tier `config` describes (a folder is warm-restarted from its files) with its asyncio API."""
        from kvtier.tiers.build import open_tier

        return cls(open_tier(layout, config), max_concurrency=max_concurrency)

    @property
    def stats(self) -> TierStats:
        return self.store.stats

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def put(self, key: BlockKey, data: torch.Tensor) -> None:
        """Store one block; raises what the store's put raises (TierFullError, TierIOError, ValueError)."""
        await self._awaitable(self.engine.write(self.store, key, data))

    async def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """The block (into `out` when given) or None on a miss."""
        return await self._awaitable(self.engine.read(self.store, key, out))

    async def contains(self, block_hash: BlockHash) -> bool:
        return await self._awaitable(self.engine.contains(self.store, block_hash))

    async def put_many(self, keys: Sequence[BlockKey], datas: Sequence[torch.Tensor]) -> None:
        """Store blocks in at most `max_concurrency` parallel runs; every put is attempted, then the
        first failure (in key order) is raised."""
        if len(keys) != len(datas):
            raise ValueError(f"put_many got {len(keys)} keys and {len(datas)} tensors")
        runs = self._runs(len(keys))
        await self._gather([self.engine.write_many(self.store, keys[r.start:r.stop], datas[r.start:r.stop])
                            for r in runs])

    async def get_many(self, keys: Sequence[BlockKey],
                       outs: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor | None]:
        """Blocks for `keys` in order (None for misses), read in at most `max_concurrency` parallel runs."""
        targets = outs if outs is not None else [None] * len(keys)
        if len(targets) != len(keys):
            raise ValueError(f"get_many got {len(keys)} keys and {len(targets)} output tensors")
        runs = self._runs(len(keys))
        jobs = [self.engine.read_many(self.store, keys[r.start:r.stop], targets[r.start:r.stop]) for r in runs]
        batches = await self._gather(jobs)
        return [data for batch in batches for data in batch]

    def _runs(self, n: int) -> list[range]:
        """`n` indices in at most `max_concurrency` contiguous runs.

        NOTE: one engine job per run, not per block: the event loop -> thread hand-off costs more
        than reading a warm 256 KiB block, so per-block jobs halved get_many's throughput.
        """
        k = min(self.max_concurrency, n)
        return [range(i * n // k, (i + 1) * n // k) for i in range(k)]

    def _awaitable(self, job: Future[T]) -> asyncio.Future[T]:
        """The engine job as a future of this loop, remembered until it ends (for `close`).

        Cancelling the awaitable cancels the job if no worker has taken it yet.
        """
        with self._jobs_lock:
            self._jobs.add(job)
        job.add_done_callback(self._forget)
        return asyncio.wrap_future(job)

    async def _gather(self, jobs: list[Future[T]]) -> list[T]:
        """Every job's result in order once all have ended; then the first failure, if any, is raised."""
        results = await asyncio.gather(*map(self._awaitable, jobs), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        return cast(list[T], results)

    def _forget(self, job: Future[Any]) -> None:
        with self._jobs_lock:
            self._jobs.discard(job)

    def _pending_jobs(self) -> list[Future[Any]]:
        with self._jobs_lock:
            return list(self._jobs)

    async def aclose(self) -> None:
        """Wait (on the loop) for this tier's jobs, then stop an owned engine and close the store. Idempotent."""
        await asyncio.gather(*map(asyncio.wrap_future, self._pending_jobs()), return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Wait for this tier's jobs, stop an owned engine and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        wait(self._pending_jobs())
        if self._owns_engine:
            self.engine.close()
        self.store.close()

    async def __aenter__(self) -> AsyncTier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
