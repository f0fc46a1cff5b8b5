"""The disk tier's batch read (`get_many` into caller buffers, what the cache's onload calls) against
the single-`get` path `kvtier bench storage` times (`--threads` threads each reading one block at a
time into its own buffer), cold, in alternating rounds.

Each round drops every object from the page cache first (fdatasync + POSIX_FADV_DONTNEED), then
reads all of them into pinned-size host buffers one way; rounds alternate which way goes first,
since this disk's speed drifts within seconds. Throughput is payload bytes over wall time.

Run: .venv/bin/python benches/bench_get_many.py [--block-bytes 2097152] [--blocks 64] [--rounds 6]
     [--threads 4] [--folder DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from kvtier.bench.page_cache import drop_cached
from kvtier.bench.storage import layout_for_block_bytes
from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.config import DiskTierConfig
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore


def _keys(count: int, block_size: int) -> list[BlockKey]:
    namespace = namespace_digest("bench-get-many")
    token_ids = list(range(count * block_size))
    hashes = hash_blocks(namespace, token_ids, block_size)
    return [BlockKey(namespace, h, tuple(token_ids[i * block_size:(i + 1) * block_size]))
            for i, h in enumerate(hashes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-bytes", type=int, default=2 << 20)
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=4, help="the single-get side's threads (the bench's "
                        "--concurrency default)")
    parser.add_argument("--folder", help="where the disk tier lives (default: the temp folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    layout = layout_for_block_bytes(args.block_bytes)
    path = tempfile.mkdtemp(prefix="kvtier-get-many-", dir=args.folder)
    store = DiskStore(layout, DiskTierConfig(path=path, capacity_bytes=4 * args.blocks * args.block_bytes))
    pool = ThreadPoolExecutor(args.threads)
    try:
        keys = _keys(args.blocks, layout.block_size)
        gen = torch.Generator().manual_seed(0)
        for key in keys:
            store.put(key, torch.randn(layout.block_shape, generator=gen).to(layout.dtype))
        outs = [torch.empty(layout.block_shape, dtype=layout.dtype) for _ in keys]
        files = [store.path_of(key.block_hash) for key in keys]

        def single_gets() -> list[torch.Tensor | None]:
            return list(pool.map(lambda i: store.get(keys[i], outs[i]), range(len(keys))))

        def batch() -> list[torch.Tensor | None]:
            return store.get_many(keys, outs)

        sides: dict[str, Callable[[], list[torch.Tensor | None]]] = {"get_threads": single_gets, "get_many": batch}
        gbps: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for r in range(args.rounds + 1):  # NOTE: round 0 is a warm-up, not counted
            for name in order if r % 2 else order[::-1]:
                drop_cached(files)
                start = time.perf_counter()
                got = sides[name]()
                seconds = time.perf_counter() - start
                if any(block is None for block in got):
                    raise AssertionError(f"{name}: a block missed; stats {store.stats.as_dict()}")
                if r:
                    gbps[name].append(args.blocks * layout.page_size_bytes / seconds / 1e9)
    finally:
        pool.shutdown()
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    ratio = [a / b for a, b in zip(gbps["get_many"], gbps["get_threads"])]
    row = {"block_bytes": layout.page_size_bytes, "blocks": args.blocks, "threads": args.threads,
           "cpus": os.cpu_count(), "gb_per_s": gbps, "ratio_per_round": ratio,
           "ratio_median": statistics.median(ratio)}
    if args.json:
        print(json.dumps(row))
        return
    for name, values in gbps.items():
        print(f"{name}: {[round(v, 2) for v in values]} GB/s")
    print(f"get_many / get on {args.threads} threads per round: {[round(v, 2) for v in ratio]}, "
          f"median {row['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
