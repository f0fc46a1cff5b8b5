"""The asyncio API of the disk tier and its read-first slots."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig
from kvtier.errors import TierFullError
from kvtier.tiers.disk_async import AsyncDiskStore
from kvtier.tiers.priority_slots import Kind, PrioritySlots
from tests.tiers.disk_support import (
    LAYOUT,
    make_block,
    make_key,
    object_bytes,
    open_store,
    same_bits,
)


def test_async_round_trip_and_batches_share_the_sync_index(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncDiskStore(open_store(tmp_path), max_concurrency=3) as aio:
            keys = [make_key(i) for i in range(8)]
            await aio.put_many(keys, [make_block(i) for i in range(8)])
            assert aio.store.num_blocks == 8 and await aio.contains(keys[3].block_hash)
            got = await aio.get_many(keys + [make_key(99)])
            assert all(same_bits(g, make_block(i)) for i, g in enumerate(got[:8])) and got[8] is None
            out = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
            assert await aio.get(keys[0], out=out) is out and same_bits(out, make_block(0))
            assert aio.stats.hits == 9 and aio.stats.misses == 1 and aio.stats.puts == 8

    asyncio.run(main())


def test_async_put_raises_typed_errors_after_attempting_all(tmp_path: Path) -> None:
    async def main() -> None:
        config = DiskTierConfig(path=str(tmp_path), capacity_bytes=2 * object_bytes(), fsync=False)
        aio = AsyncDiskStore.open(LAYOUT, config, max_concurrency=2)
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


async def _hold(slots: PrioritySlots, kind: Kind, name: str, order: list[str], release: asyncio.Event) -> None:
    async with slots.slot(kind):
        order.append(name)
        await release.wait()


def test_slots_bound_concurrency_and_serve_reads_before_writes() -> None:
    async def main() -> list[str]:
        slots, order, gate = PrioritySlots(2), [], asyncio.Event()
        holders = [asyncio.create_task(_hold(slots, "write", f"w{i}", order, gate)) for i in range(2)]
        await asyncio.sleep(0)  # let both holders take their slots
        queued = [asyncio.create_task(_hold(slots, kind, name, order, gate))
                  for kind, name in (("write", "w2"), ("write", "w3"), ("read", "r0"), ("read", "r1"))]
        await asyncio.sleep(0)
        assert order == ["w0", "w1"] and slots.num_waiting == 4
        gate.set()
        await asyncio.gather(*holders, *queued)
        return order

    assert asyncio.run(main()) == ["w0", "w1", "r0", "r1", "w2", "w3"]


def test_cancelled_waiter_does_not_leak_its_slot() -> None:
    async def main() -> None:
        slots, order, gate = PrioritySlots(1), [], asyncio.Event()
        holder = asyncio.create_task(_hold(slots, "write", "w0", order, gate))
        await asyncio.sleep(0)
        victim = asyncio.create_task(_hold(slots, "read", "r0", order, gate))
        later = asyncio.create_task(_hold(slots, "write", "w1", order, gate))
        await asyncio.sleep(0)
        victim.cancel()
        gate.set()
        await asyncio.gather(holder, later)
        assert victim.cancelled() and order == ["w0", "w1"] and slots.num_waiting == 0
        async with slots.slot("read"):  # the slot came back
            pass

    asyncio.run(main())
