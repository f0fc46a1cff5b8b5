"""A prefix restored from the disk tier after a restart, against its floor, in alternating rounds.

The cache computes nothing here: a prompt's blocks are written once (through the pool and
`persist`), then each round opens a new cache over the folder (a warm restart) and times
`allocate(..., wait=True)`: hashing, lookups, reads, header and checksum checks, placement in the
pool. The floor is plain reads of the same object files into preallocated buffers on as many
threads (kvtier/demo/floor.py). The page cache is warm for both, as after a restart on one host.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import DeviceTierConfig, DiskTierConfig, KVLayout, KVTierConfig, TransferConfig
from kvtier.demo.floor import plain_read_s, restored_paths
from kvtier.types import SeqId


def restore_bench(layout: KVLayout, prefix_tokens: int, rounds: int, folder: str | None = None,
                  num_workers: int = 4, cold: bool = False) -> dict[str, Any]:
    """`rounds` of (restore, floor), alternating which goes first. `cold`: the objects' pages are
    dropped from the page cache before each (posix_fadvise DONTNEED after a sync), so both read
    the disk itself, as after a reboot or on another host."""
    path = tempfile.mkdtemp(prefix="kvtier-restore-", dir=folder)
    blocks = prefix_tokens // layout.block_size
    config = KVTierConfig(layout=layout, device=DeviceTierConfig(num_blocks=blocks + 2),
                          tiers=(DiskTierConfig(path=path, capacity_bytes=(blocks + 8) * (layout.page_size_bytes
                                                                                        + 4096), fsync=False),),
                          transfer=TransferConfig(num_workers=num_workers))
    namespace = namespace_digest("bench-restore", None)
    prompt = [(11 * i + 3) % 50000 for i in range(blocks * layout.block_size + 1)]
    try:
        first = TieredKVCache.from_config(config)
        seq = first.allocate(SeqId("fill"), prompt, namespace)
        first.pool.kv_cache.normal_()
        first.mark_computed(seq.seq_id, len(prompt) - 1)
        first.free(seq.seq_id)
        first.persist()
        first.close()
        os.sync()
        restore_s, floor_s = [], []
        for r in range(rounds):
            for which in (("restore", "floor") if r % 2 == 0 else ("floor", "restore")):
                cache = TieredKVCache.from_config(config)
                paths = restored_paths(cache, namespace, prompt)
                if cold:
                    _drop_pages(paths)
                try:
                    if which == "floor":
                        assert len(paths) == blocks, f"{len(paths)} of {blocks} objects on disk"
                        floor_s.append(plain_read_s(paths, num_workers))
                        continue
                    start = time.perf_counter()
                    state = cache.allocate(SeqId(f"r{r}"), prompt, namespace, wait=True)
                    restore_s.append(time.perf_counter() - start)
                    assert state.num_cached_tokens == blocks * layout.block_size, state.num_cached_tokens
                finally:
                    cache.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    ratios = [a / b for a, b in zip(restore_s, floor_s)]
    return {"prefix_tokens": blocks * layout.block_size, "blocks": blocks, "bytes": blocks * layout.page_size_bytes,
            "num_workers": num_workers, "page_cache": "cold" if cold else "warm", "restore_s": restore_s,
            "floor_s": floor_s,
            "ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "restore_gb_s_median": blocks * layout.page_size_bytes / statistics.median(restore_s) / 1e9,
            "torch_threads": torch.get_num_threads()}


def _drop_pages(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
