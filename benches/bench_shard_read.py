"""Bytes a rank reads of another layout's object: one block written whole (TP=1), read back as rank 0's
shard at other layouts through OtherLayouts, its byte counter against the object's size.

    .venv/bin/python benches/bench_shard_read.py
"""
from __future__ import annotations

import os
import tempfile

import torch

from kvtier.config import DiskTierConfig, ModelConfig
from kvtier.parallel.shards import ParallelConfig, rank_shard
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk.other_layouts import OtherLayouts
from kvtier.types import BlockHash, Namespace

CASES = [("smollm2-135m", 3, 1), ("llama-3-8b", 2, 1), ("llama-3-8b", 1, 2), ("llama-3-8b", 8, 1)]


def main() -> None:
    key = BlockKey(Namespace(b"n" * 32), BlockHash(b"h" * 32), tuple(range(16)))
    for name, tp, pp in CASES:
        config = ModelConfig.preset(name)
        whole = config.kv_layout(16)
        with tempfile.TemporaryDirectory() as folder:
            store = DiskStore(whole, DiskTierConfig(path=folder, capacity_bytes=1 << 30, fsync=False))
            store.put(key, torch.randn(whole.block_shape).to(whole.dtype))
            size = os.path.getsize(store.path_of(key.block_hash))
            layout = rank_shard(config, ParallelConfig(tp_size=tp, pp_size=pp), 0).kv_layout(config, 16)
            reader = OtherLayouts(layout, folder, whole, os.path.join(folder, "shards", "rank-0"))
            assert reader.get(key) is not None
            print(f"{name} read at TP={tp} PP={pp}: object {size} bytes, rank 0 read {reader.stats.bytes_read} "
                  f"= {reader.stats.bytes_read / size:.3f}")
            reader.close()
            store.close()


if __name__ == "__main__":
    main()
