"""AsyncTier: the asyncio API of a tier over the transfer engine (round trips, typed errors, read-first order)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig
from kvtier.errors import TierFullError, TierIOError
from kvtier.tiers.disk import DiskStore
from kvtier.transfer.aio import AsyncTier
from tests.transfer.fake_tier import LAYOUT, FakeTier, make_block, make_key


def disk_config(path: Path, capacity_bytes: int = 1 << 20) -> DiskTierConfig:
    return DiskTierConfig(path=str(path), capacity_bytes=capacity_bytes, fsync=False)


def object_bytes(path: Path) -> int:
    """What one block object of LAYOUT takes on disk, measured on a throwaway store."""
    with DiskStore(LAYOUT, disk_config(path)) as probe:
        probe.put(make_key(0), make_block(0))
        return probe.used_bytes


def test_async_round_trip_and_batches_share_the_sync_index(tmp_path: Path) -> None:
    async def main() -> AsyncTier:
        async with AsyncTier(DiskStore(LAYOUT, disk_config(tmp_path)), max_concurrency=3) as aio:
            keys = [make_key(i) for i in range(8)]
            await aio.put_many(keys, [make_block(i) for i in range(8)])
            assert aio.store.num_blocks == 8 and await aio.contains(keys[3].block_hash)
            got = await aio.get_many(keys + [make_key(99)])
            assert all(g is not None and torch.equal(g, make_block(i)) for i, g in enumerate(got[:8]))
            assert got[8] is None
            out = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
            assert await aio.get(keys[0], out=out) is out and torch.equal(out, make_block(0))
            assert aio.stats.hits == 9 and aio.stats.misses == 1 and aio.stats.puts == 8
        return aio

    assert asyncio.run(main()).is_closed


def test_async_put_raises_typed_errors_after_attempting_all(tmp_path: Path) -> None:
    async def main() -> None:
        config = disk_config(tmp_path / "tier", capacity_bytes=2 * object_bytes(tmp_path / "probe"))
        aio = AsyncTier.open(LAYOUT, config, max_concurrency=1)  # one run: both puts in one job
        await aio.put(make_key(0), make_block(0))
        aio.store.pin(make_key(0).block_hash)
        await aio.put(make_key(1), make_block(1))
        aio.store.pin(make_key(1).block_hash)
        with pytest.raises(TierFullError):
            await aio.put_many([make_key(2), make_key(3)], [make_block(2), make_block(3)])
        assert aio.stats.rejected == 2
        with pytest.raises(ValueError, match="shape"):
            await aio.put(make_key(4), torch.zeros(2))
        await aio.aclose()

    asyncio.run(main())


def test_put_many_raises_the_first_failure_in_key_order_across_runs() -> None:
    async def main() -> FakeTier:
        tier, keys = FakeTier(), [make_key(i) for i in range(6)]
        tier.put_faults[keys[3].block_hash] = TierIOError("later key")
        tier.put_faults[keys[1].block_hash] = TierFullError("earlier key")
        async with AsyncTier(tier, max_concurrency=3) as aio:  # runs [0, 1] [2, 3] [4, 5]
            with pytest.raises(TierFullError, match="earlier key"):
                await aio.put_many(keys, [make_block(i) for i in range(6)])
            with pytest.raises(ValueError, match="3 keys and 2 output tensors"):
                await aio.get_many(keys[:3], [None, None])
        return tier

    tier = asyncio.run(main())
    assert sorted(tier.calls) == [("put", i) for i in range(6)] and tier.num_blocks == 4


def test_reads_awaited_after_queued_writes_run_first() -> None:
    async def main() -> list[tuple[str, int]]:
        tier = FakeTier()
        for i in range(3):
            tier.put(make_key(i), make_block(i))
        async with AsyncTier(tier, max_concurrency=1) as aio:
            tier.gate.clear()
            blocker = asyncio.ensure_future(aio.get(make_key(0)))  # a read: first in line, holds the worker
            queued = [asyncio.ensure_future(op) for op in (
                aio.put(make_key(5), make_block(5)), aio.put(make_key(6), make_block(6)),
                aio.get(make_key(1)), aio.get(make_key(2)))]
            await asyncio.sleep(0)  # one loop turn (no delay): every task hands its job to the engine
            tier.gate.set()
            await asyncio.gather(blocker, *queued)
        return tier.calls[3:]

    assert asyncio.run(main()) == [("get", 0), ("get", 1), ("get", 2), ("put", 5), ("put", 6)]


def test_cancelled_await_cancels_its_queued_job_and_frees_its_place() -> None:
    async def main() -> tuple[FakeTier, list[bool]]:
        tier = FakeTier()
        tier.put(make_key(0), make_block(0))
        async with AsyncTier(tier, max_concurrency=1) as aio:
            tier.gate.clear()
            blocker = asyncio.ensure_future(aio.get(make_key(0)))
            victims = [asyncio.ensure_future(aio.get(make_key(1))),
                       asyncio.ensure_future(aio.put(make_key(2), make_block(2)))]
            later = asyncio.ensure_future(aio.put(make_key(3), make_block(3)))
            await asyncio.sleep(0)  # one loop turn (no delay): every task hands its job to the engine
            for victim in victims:
                victim.cancel()
            await asyncio.gather(*victims, return_exceptions=True)  # the cancel reaches the engine
            tier.gate.set()
            await asyncio.gather(blocker, later)
            assert await aio.get(make_key(3)) is not None  # the only worker is free again
        return tier, [victim.cancelled() for victim in victims]

    tier, cancelled = asyncio.run(main())
    assert cancelled == [True, True]
    assert tier.calls == [("put", 0), ("get", 0), ("put", 3), ("get", 3)] and not tier.contains(make_key(2).block_hash)
