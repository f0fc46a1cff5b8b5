"""DiskStore basics through the public TierStore API: round trips, LRU, pins, capacity, errors."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kvtier.config import DiskTierConfig, KVLayout
from kvtier.errors import TierFullError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore
from kvtier.types import TierKind
from tests.tiers.disk_support import (
    LAYOUT,
    make_block,
    make_key,
    object_bytes,
    object_files,
    open_store,
    same_bits,
)


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_put_get_round_trip_every_codec_and_dtype(tmp_path: Path, codec: str, dtype: torch.dtype) -> None:
    layout = KVLayout(num_layers=2, num_kv_heads=4, head_dim=16, block_size=16, dtype=dtype)
    store = DiskStore(layout, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 24, codec=codec, fsync=True))
    key = BlockKey(make_key(1).namespace, make_key(1).block_hash, tuple(range(16)))
    data = make_block(1, layout)
    store.put(key, data)
    assert store.contains(key.block_hash) and store.num_blocks == 1
    assert same_bits(store.get(key), data)
    out = torch.empty(layout.block_shape, dtype=dtype)
    assert store.get(key, out=out) is out and same_bits(out, data)
    assert store.stats.hits == 2 and store.stats.puts == 1 and store.stats.corrupt == 0


def test_object_is_named_by_hex_digest_in_one_level_fanout(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    key = make_key(3)
    store.put(key, make_block(3))
    digest = key.block_hash.hex()
    assert object_files(tmp_path) == [tmp_path / digest[:2] / f"{digest}.kvb"]
    assert store.used_bytes == object_bytes() and store.kind is TierKind.DISK
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file left behind"


def test_miss_on_absent_and_on_wrong_identity(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    key = make_key(1)
    store.put(key, make_block(1))
    assert store.get(make_key(2)) is None
    assert store.get(key._replace(token_ids=(7, 7, 7, 7))) is None  # same hash, other tokens
    assert store.stats.misses == 2 and store.stats.corrupt == 1
    assert store.get(key) is None, "a mismatching object is removed, never served later"


def test_lru_evicts_least_recently_used_unpinned(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=3)
    for i in range(3):
        store.put(make_key(i), make_block(i))
    assert store.get(make_key(0)) is not None  # 0 is now most recent; 1 is the LRU
    store.put(make_key(3), make_block(3))
    assert [store.contains(make_key(i).block_hash) for i in range(4)] == [True, False, True, True]
    assert store.stats.evictions == 1 and len(object_files(tmp_path)) == 3


def test_pinned_block_is_never_evicted(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=2)
    store.put(make_key(0), make_block(0))
    store.pin(make_key(0).block_hash)
    for i in range(1, 6):
        store.put(make_key(i), make_block(i))
    assert same_bits(store.get(make_key(0)), make_block(0))
    with pytest.raises(RuntimeError, match="pinned"):
        store.evict(make_key(0).block_hash)
    store.unpin(make_key(0).block_hash)
    assert store.evict(make_key(0).block_hash) and not store.evict(make_key(0).block_hash)


def test_full_of_pinned_blocks_raises_tier_full_with_numbers_and_remedy(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=2)
    for i in range(2):
        store.put(make_key(i), make_block(i))
        store.pin(make_key(i).block_hash)
    with pytest.raises(TierFullError) as info:
        store.put(make_key(9), make_block(9))
    text = str(info.value)
    assert f"a {object_bytes()}-byte block" in text and "0 of" in text and "2 objects are unpinned" in text
    assert f"capacity_bytes={2 * object_bytes()}" in text and "unpin blocks, raise capacity_bytes" in text
    assert store.stats.rejected == 1 and not store.contains(make_key(9).block_hash)


def test_block_larger_than_capacity_is_refused(tmp_path: Path) -> None:
    store = DiskStore(LAYOUT, DiskTierConfig(path=str(tmp_path), capacity_bytes=100, fsync=False))
    with pytest.raises(TierFullError, match="capacity_bytes=100"):
        store.put(make_key(0), make_block(0))


def test_put_rejects_wrong_shape_and_get_rejects_wrong_out(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        store.put(make_key(0), torch.zeros(3, dtype=LAYOUT.dtype))
    store.put(make_key(0), make_block(0))
    with pytest.raises(ValueError, match="dtype"):
        store.get(make_key(0), out=torch.empty(LAYOUT.block_shape, dtype=torch.float32))


def test_pin_and_unpin_misuse_raise(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(KeyError, match="not in this disk tier"):  # TierStore.pin's contract
        store.pin(make_key(0).block_hash)
    store.put(make_key(0), make_block(0))
    with pytest.raises(RuntimeError, match="not pinned"):
        store.unpin(make_key(0).block_hash)


def test_eviction_hook_receives_verified_block(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=1)
    handed: list[tuple[BlockKey, torch.Tensor]] = []
    store.set_eviction_hook(lambda key, data: handed.append((key, data.clone())))
    store.put(make_key(0), make_block(0))
    store.put(make_key(1), make_block(1))
    assert len(handed) == 1 and handed[0][0] == make_key(0) and same_bits(handed[0][1], make_block(0))


def test_random_ops_keep_capacity_and_pins(tmp_path: Path) -> None:
    rng = random.Random(0)
    store = open_store(tmp_path, num_blocks=5)
    pinned: set[int] = set()
    for _ in range(300):
        i = rng.randrange(12)
        op = rng.random()
        if op < 0.5:
            try:
                store.put(make_key(i), make_block(i))
            except TierFullError:
                assert len(pinned) == 5
        elif op < 0.75:
            got = store.get(make_key(i))
            assert got is None or same_bits(got, make_block(i))
        elif op < 0.85 and store.contains(make_key(i).block_hash) and len(pinned) < 5:
            store.pin(make_key(i).block_hash)
            pinned.add(i) if i not in pinned else store.unpin(make_key(i).block_hash)
        elif pinned:
            j = pinned.pop()
            store.unpin(make_key(j).block_hash)
        assert store.used_bytes <= store.capacity_bytes
        assert sum(p.stat().st_size for p in object_files(tmp_path)) == store.used_bytes
        assert all(store.contains(make_key(j).block_hash) for j in pinned)



def test_pin_if_held_pins_only_what_the_tier_holds(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=2)
    store.put(make_key(0), make_block(0))
    assert not store.pin_if_held(make_key(1).block_hash) and not store.is_pinned(make_key(1).block_hash)
    assert store.pin_if_held(make_key(0).block_hash) and store.is_pinned(make_key(0).block_hash)
    for i in range(1, 4):
        store.put(make_key(i), make_block(i))
    assert store.contains(make_key(0).block_hash)  # pinned: never the one evicted
    store.unpin(make_key(0).block_hash)
    assert not store.is_pinned(make_key(0).block_hash)


def test_pin_known_pins_what_the_index_holds_and_unpin_many_releases_them(tmp_path: Path) -> None:
    store = open_store(tmp_path, num_blocks=4)
    store.put(make_key(0), make_block(0))
    store.put(make_key(2), make_block(2))
    hashes = [make_key(i).block_hash for i in range(3)]
    assert store.pin_known(hashes) == [True, False, True]
    assert [store.is_pinned(h) for h in hashes] == [True, False, True]
    store.unpin_many([hashes[0], hashes[2]])
    assert not any(store.is_pinned(h) for h in hashes)
    with pytest.raises(RuntimeError, match="not pinned"):
        store.unpin_many([hashes[0]])
