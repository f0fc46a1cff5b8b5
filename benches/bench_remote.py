"""The remote tier's throughput through its public API against redis-benchmark SET/GET of the same value
size, on the same server, in the same run, alternating short rounds.

Run: .venv/bin/python benches/bench_remote.py [--value-kib 256] [--clients 4] [--ops 400] [--rounds 4]
     [--url redis://HOST:PORT]   (default: starts a redis-server on a free loopback port)
Both sides use `--clients` connections at once and one command per round trip (no pipelining):
the tier's puts are SET NX of a whole block object, its reads GET + verification + copy into a block.
A third side, redis-py alone (SET/GET of raw bytes of the same size), shows what the client allows.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def layout_for(value_kib: int):
    from kvtier.config import KVLayout

    # 2 x layers x 8 KV heads x 16 tokens x 128 dims x 2 bytes = 64 KiB per layer
    return KVLayout(num_layers=max(1, value_kib // 64), num_kv_heads=8, head_dim=128, block_size=16,
                    dtype=torch.float16)


def redis_benchmark(port: int, size: int, clients: int, ops: int, batch: int) -> dict[str, float]:
    """redis-benchmark's SET and GET rates (requests/s) for values of `size` bytes, `batch` commands a round trip."""
    done = subprocess.run([shutil.which("redis-benchmark") or shutil.which("valkey-benchmark") or "redis-benchmark",
                           "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", str(size), "-n", str(ops),
                           "-c", str(clients), "-r", str(ops), "-P", str(batch), "--csv"],
                          capture_output=True, text=True, check=True)
    rows = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(done.stdout)) if row and row[0] != "test"}
    return {"set": rows["SET"], "get": rows["GET"]}


def tier_round(store, layout, clients: int, ops: int, offset: int, batch: int) -> dict[str, float]:
    import hashlib

    from kvtier.block.hashing import namespace_digest
    from kvtier.tiers.base import BlockKey
    from kvtier.types import BlockHash

    ns = namespace_digest("bench-remote", None)
    keys = [BlockKey(ns, BlockHash(hashlib.sha256(b"%d" % (offset + i)).digest()), ()) for i in range(ops)]
    data = torch.randn(layout.block_shape).to(layout.dtype)
    outs = [torch.empty(layout.block_shape, dtype=layout.dtype) for _ in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        list(pool.map(lambda k: store.put(k, data), keys))
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        if batch == 1:
            got = list(pool.map(lambda ik: store.get(ik[1], outs[ik[0] % clients]), enumerate(keys)))
        else:  # the cache's onload path: get_many, one MGET per batch
            batches = [keys[i:i + batch] for i in range(0, len(keys), batch)]
            got = [b for part in pool.map(store.get_many, batches) for b in part]
        get_s = time.perf_counter() - start
    if any(g is None for g in got):
        raise AssertionError("a block put in this round was not read back")
    store._client.delete(*(f"kv:{k.block_hash.hex()}" for k in keys))
    return {"set": ops / put_s, "get": ops / get_s}


def plain_round(url: str, size: int, clients: int, ops: int, offset: int) -> dict[str, float]:
    """redis-py itself, SET/GET of `size` raw bytes (no object, no verification): the ceiling through the client."""
    import redis

    client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=clients))
    value = bytes(size)
    names = [f"plain:{offset + i}" for i in range(ops)]
    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        list(pool.map(lambda n: client.set(n, value), names))
        set_s = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(client.get, names))
        get_s = time.perf_counter() - start
    client.delete(*names)
    client.close()
    return {"set": ops / set_s, "get": ops / get_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--value-kib", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="reads per round trip: the tier's get_many (MGET) "
                        "against redis-benchmark -P (writes stay one per round trip on the tier's side)")
    parser.add_argument("--url")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from kvtier.config import RemoteTierConfig
    from kvtier.tiers.format.encode import encode_block
    from kvtier.tiers.remote import RemoteStore
    from tests.tiers.remote.redis_server import RedisServer

    server = None
    if args.url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="kvtier-bench-redis-")))
        server.start()
        url = server.url
    else:
        url = args.url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    layout = layout_for(args.value_kib)
    from kvtier.block.hashing import namespace_digest
    from kvtier.tiers.base import BlockKey
    from kvtier.types import BlockHash

    probe = BlockKey(namespace_digest("x", None), BlockHash(bytes(32)), ())
    size = sum(memoryview(p).nbytes for p in encode_block(probe, torch.zeros(layout.block_shape, dtype=layout.dtype),
                                                          layout))
    store = RemoteStore(layout, RemoteTierConfig(url=url, capacity_bytes=1 << 40, timeout_s=5.0,
                                                 max_connections=args.clients))
    tier: dict[str, list[float]] = {"set": [], "get": []}
    bench: dict[str, list[float]] = {"set": [], "get": []}
    plain: dict[str, list[float]] = {"set": [], "get": []}
    try:
        for r in range(args.rounds):
            sides = [(bench, lambda: redis_benchmark(port, size, args.clients, args.ops, args.batch)),
                     (tier, lambda: tier_round(store, layout, args.clients, args.ops, r * args.ops, args.batch)),
                     (plain, lambda: plain_round(url, size, args.clients, args.ops, r * args.ops))]
            for rows, fn in (sides if r % 2 == 0 else sides[::-1]):
                rates = fn()
                for op in ("set", "get"):
                    rows[op].append(rates[op])
    finally:
        store.close()
        if server is not None:
            server.stop()
    ratios = {op: [t / b for t, b in zip(tier[op], bench[op])] for op in ("set", "get")}
    result = {"value_bytes": size, "clients": args.clients, "ops": args.ops, "batch": args.batch, "tier_ops_s": tier,
              "redis_benchmark_ops_s": bench, "redis_py_plain_ops_s": plain, "ratio": ratios,
              "median_ratio": {op: statistics.median(v) for op, v in ratios.items()}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"values of {size} bytes, {args.clients} clients, {args.ops} ops per round, {args.rounds} rounds")
    for op in ("set", "get"):
        print(f"  {op.upper()}: tier {[round(x) for x in tier[op]]} ops/s, redis-benchmark "
              f"{[round(x) for x in bench[op]]} ops/s; ratio {[round(x, 2) for x in ratios[op]]} "
              f"({size * statistics.median(tier[op]) / 1e9:.2f} GB/s tier median); redis-py alone "
              f"{[round(x) for x in plain[op]]} ops/s")


if __name__ == "__main__":
    main()
