"""get_many on the tier's reader threads: every block lands in its own output, in the caller's order,
whatever run and thread read it; misses stay in place; a closed store answers misses, not errors."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from kvtier.tiers.disk import store as disk_store
from tests.tiers.disk_support import LAYOUT, make_block, make_key, open_store, same_bits


def _readers() -> int:
    return sum(t.name.startswith("kvtier-disk-read") for t in threading.enumerate())


@pytest.mark.parametrize("read_threads", [1, 3, 8])
def test_batch_lands_every_block_in_its_own_output(tmp_path: Path, read_threads: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_store, "MIN_THREAD_READ_BYTES", 1)  # NOTE: this layout's blocks are tiny
    before = _readers()
    store = open_store(tmp_path / "tier", num_blocks=200, read_threads=read_threads)
    stored = [i for i in range(70) if i % 7 != 3]  # every seventh never written: misses between hits
    for i in stored:
        store.put(make_key(i), make_block(i))
    keys = [make_key(i) for i in range(70)]
    outs = [torch.full(LAYOUT.block_shape, float("nan"), dtype=LAYOUT.dtype) for _ in keys]
    got = store.get_many(keys, outs)
    for i, block in enumerate(got):
        if i in stored:
            assert block is not None and block.data_ptr() == outs[i].data_ptr() and same_bits(outs[i], make_block(i))
        else:
            assert block is None and torch.isnan(outs[i]).all()
    assert store.stats.hits == len(stored) and store.stats.misses == 70 - len(stored)
    assert 0 < _readers() - before <= read_threads if read_threads > 1 else _readers() == before
    store.close()
    assert _readers() == before  # close joins them


def test_small_batches_stay_in_the_callers_thread(tmp_path: Path) -> None:
    before = _readers()
    store = open_store(tmp_path / "tier", num_blocks=100, read_threads=4)
    keys = [make_key(i) for i in range(40)]  # NOTE: 40 tiny blocks, far below MIN_THREAD_READ_BYTES
    for i, key in enumerate(keys):
        store.put(key, make_block(i))
    assert all(block is not None for block in store.get_many(keys))
    assert _readers() == before
    store.close()


def test_a_closed_store_answers_a_batch_with_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_store, "MIN_THREAD_READ_BYTES", 1)
    store = open_store(tmp_path / "tier", num_blocks=100, read_threads=4)
    keys = [make_key(i) for i in range(40)]
    for i, key in enumerate(keys):
        store.put(key, make_block(i))
    assert all(block is not None for block in store.get_many(keys))
    store.close()
    assert store.get_many(keys) == [None] * len(keys)
    assert store.stats.io_errors == len(keys)


def test_read_threads_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="read_threads"):
        open_store(tmp_path / "tier", read_threads=0)


def test_a_batch_lands_in_strided_views_of_a_larger_tensor_leaving_its_gaps_alone(tmp_path: Path) -> None:
    store = open_store(tmp_path / "tier")
    keys = [make_key(i) for i in range(5)]
    for i, key in enumerate(keys):
        store.put(key, make_block(i))
    layers, kv, heads, bs, dim = LAYOUT.block_shape
    whole = torch.full((layers, kv, heads, len(keys), 2 * bs, dim), float("nan"), dtype=LAYOUT.dtype)
    outs = list(whole[:, :, :, :, :bs].unbind(3))  # NOTE: runs of [bs, dim] with gaps of the same size between
    assert not outs[0].is_contiguous()
    got = store.get_many(keys, outs)
    for i, (block, out) in enumerate(zip(got, outs)):
        assert block is out and same_bits(out, make_block(i))
    assert torch.isnan(whole[:, :, :, :, bs:]).all()
    path = tmp_path / "tier" / keys[2].block_hash.hex()[:2] / f"{keys[2].block_hash.hex()}.kvb"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # a payload byte
    path.write_bytes(bytes(raw))
    again = store.get_many(keys, outs)
    assert again[2] is None and all(again[i] is outs[i] for i in (0, 1, 3, 4))
    assert store.stats.corrupt == 1
    store.close()
