"""Several processes writing and reading overlapping keys in one shared folder: no torn reads."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.tiers.disk_support import (
    make_block,
    make_key,
    object_files,
    open_store,
    same_bits,
    shared_worker,
)

NUM_KEYS = 12


@pytest.mark.parametrize("capacity_blocks", [100, 6], ids=["roomy", "evicting"])
def test_processes_sharing_a_folder_never_read_torn_blocks(tmp_path: Path, capacity_blocks: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=ctx) as pool:
        futures = [pool.submit(shared_worker, str(tmp_path), seed, NUM_KEYS, 300, capacity_blocks)
                   for seed in range(3)]
        results = [f.result(timeout=120) for f in futures]
    assert all(r["wrong"] == 0 and r["corrupt"] == 0 for r in results), results
    assert sum(r["hits"] for r in results) > 0
    store = open_store(tmp_path, shared=True)
    for i in range(NUM_KEYS):
        got = store.get(make_key(i))
        assert got is None or same_bits(got, make_block(i))
    assert store.stats.corrupt == 0 and not list(tmp_path.rglob("*.tmp"))
    assert len(object_files(tmp_path)) == store.num_blocks


def test_shared_store_sees_objects_written_by_another_store(tmp_path: Path) -> None:
    writer, reader = open_store(tmp_path, shared=True), open_store(tmp_path, shared=True)
    writer.put(make_key(1), make_block(1))
    assert reader.contains(make_key(1).block_hash)
    assert same_bits(reader.get(make_key(2 - 1)), make_block(1))
    local = open_store(tmp_path / "other")
    assert not local.contains(make_key(1).block_hash)
