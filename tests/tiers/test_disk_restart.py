"""Warm restart and crashes: the folder alone is the truth, and nothing damaged is ever served."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from kvtier.tiers.disk.names import temp_name
from tests.tiers.disk_support import (
    can_link_unnamed,
    killed_writer,
    make_block,
    make_key,
    object_bytes,
    object_files,
    open_store,
    same_bits,
)


def test_warm_restart_rebuilds_index_and_serves_every_block(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(10):
        store.put(make_key(i), make_block(i))
    store.close()
    again = open_store(tmp_path)
    assert again.num_blocks == 10 and again.used_bytes == 10 * object_bytes()
    assert all(same_bits(again.get(make_key(i)), make_block(i)) for i in range(10))


def test_restart_trims_to_capacity_oldest_mtime_first(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(6):
        store.put(make_key(i), make_block(i))
    now = time.time()
    for i in range(6):  # make block 5 the oldest, block 0 the newest
        digest = make_key(i).block_hash.hex()
        path = tmp_path / digest[:2] / f"{digest}.kvb"
        os.utime(path, (now - 100 * (i + 1), now - 100 * (i + 1)))
    small = open_store(tmp_path, num_blocks=4)
    assert small.used_bytes <= small.capacity_bytes and len(object_files(tmp_path)) == 4
    assert [small.contains(make_key(i).block_hash) for i in range(6)] == [True] * 4 + [False] * 2
    small.put(make_key(9), make_block(9))  # evicts the oldest survivor, block 3
    assert not small.contains(make_key(3).block_hash)


def _plant_temp(root: Path, age_s: float) -> Path:
    digest = make_key(0).block_hash.hex()
    folder = root / digest[:2]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / temp_name(make_key(0).block_hash)
    path.write_bytes(b"partial")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_local_restart_removes_temporaries_of_dead_writers(tmp_path: Path) -> None:
    path = _plant_temp(tmp_path, age_s=0)
    open_store(tmp_path)
    assert not path.exists()


def test_shared_restart_keeps_fresh_temporaries_and_removes_stale_ones(tmp_path: Path) -> None:
    fresh, stale = _plant_temp(tmp_path, age_s=0), _plant_temp(tmp_path, age_s=7200)
    open_store(tmp_path, shared=True)
    assert fresh.exists() and not stale.exists()


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "temp_name"])
def test_writer_killed_mid_write_leaves_no_damaged_object(tmp_path: Path, tmpfile: bool) -> None:
    if tmpfile and not can_link_unnamed(tmp_path / "probe"):
        pytest.skip("O_TMPFILE inodes cannot be linked here; the store uses temporary names")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=killed_writer, args=(str(tmp_path), 4, ready, tmpfile))
    child.start()
    try:
        assert ready.wait(timeout=60), "the writer never reached its torn write"
        # the half-written object exists now: as a temporary file, or as an inode with no name
        assert len(list(tmp_path.rglob("*.tmp"))) == (0 if tmpfile else 1)
        assert len(object_files(tmp_path)) == 4
    finally:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    store = open_store(tmp_path)
    assert store.num_blocks == 4 and not list(tmp_path.rglob("*.tmp"))
    assert all(same_bits(store.get(make_key(i)), make_block(i)) for i in range(4))
    assert store.get(make_key(4)) is None and store.stats.corrupt == 0


def test_torn_object_left_by_a_crash_is_detected_after_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put(make_key(0), make_block(0))
    path = object_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[: object_bytes() // 2])  # e.g. lost delayed allocation
    again = open_store(tmp_path)
    assert again.contains(make_key(0).block_hash)  # indexed from its name, verified on read
    assert again.get(make_key(0)) is None and again.stats.corrupt == 1 and not path.exists()
