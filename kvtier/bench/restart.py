"""Warm-restart measurement: fill a disk-tier folder with N objects, then time index rebuilds."""
from __future__ import annotations

import shutil
import time
from typing import Any

import torch

from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.config import DiskTierConfig, KVLayout
from kvtier.synthetic import block_content
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore

SMALL_LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=16, block_size=16, dtype=torch.float16)  # 1 KiB


def measure_restart(path: str, num_objects: int, repeats: int = 3, layout: KVLayout = SMALL_LAYOUT) -> dict[str, Any]:
    """Fill `path` through DiskStore.put (fsync off), then time `repeats` new DiskStore() on it.

    Each restarted store must index every object and serve one of them bit-identical. The dentry
    cache is warm after the fill, as after a process restart on the same host. Removes `path`.
    """
    shutil.rmtree(path, ignore_errors=True)
    config = DiskTierConfig(path=path, capacity_bytes=1 << 40, fsync=False)
    ns = namespace_digest("bench-restart", None)
    bs = layout.block_size
    tokens = list(range(num_objects * bs))
    keys = [BlockKey(ns, h, tuple(tokens[i * bs:(i + 1) * bs])) for i, h in enumerate(hash_blocks(ns, tokens, bs))]
    data = block_content(layout, b"\0" * 8)
    store, start = DiskStore(layout, config), time.perf_counter()
    for key in keys:
        store.put(key, data)
    fill_s = time.perf_counter() - start
    restarts: list[float] = []
    try:
        for i in range(repeats):
            start = time.perf_counter()
            again = DiskStore(layout, config)
            restarts.append(time.perf_counter() - start)
            served = again.get(keys[i % num_objects])
            if again.num_blocks != num_objects or served is None or not torch.equal(served, data):
                raise AssertionError(f"restart indexed {again.num_blocks} of {num_objects} objects or served wrong data")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"objects": num_objects, "object_bytes": store.used_bytes // num_objects, "fill_s": fill_s,
            "restart_s": sorted(restarts)[len(restarts) // 2], "restart_all_s": restarts}
