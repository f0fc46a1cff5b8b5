"""The remote tier's throughput through its public API against redis-benchmark SET/GET of the same value
size, on the same server, in the same run, alternating short rounds.

Run: .venv/bin/python benches/bench_remote.py [--value-kib 256] [--clients 4] [--ops 400] [--rounds 4]
     [--url redis://HOST:PORT]   (default: starts a redis-server on a free loopback port, in a session
     of its own, as a service runs: a child in this process's session shares its CPU scheduling group
     (sched_autogroup) with the tier's client threads, which then starve it; README, the remote row)
Both sides use `--clients` connections at once (the tier: a thread each, looping over its share) and
one command per round trip (no pipelining):
the tier's puts are SET NX of a whole block object, its reads GET + verification + copy into a block.
A third side, redis-py alone (SET/GET of raw bytes of the same size), shows what the client allows;
the tier's own GETs read again through its wire alone (the compiled call, with its checksum, but
none of the store's Python: verification, stats, buffers) show what the store's Python costs (a
reference taken right after the tier's reads, not a side of its own in the alternation).
With --url, use a scratch server or db: the bench writes and then deletes `key:*` (redis-benchmark's
keys, every one), `plain:*` and its own `kv:*` objects there.
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def layout_for(value_kib: int):
    from kvtier.config import KVLayout

    # 2 x layers x 8 KV heads x 16 tokens x 128 dims x 2 bytes = 64 KiB per layer
    return KVLayout(num_layers=max(1, value_kib // 64), num_kv_heads=8, head_dim=128, block_size=16,
                    dtype=torch.float16)


def redis_benchmark(url: str, size: int, clients: int, ops: int, batch: int) -> dict[str, float]:
    """redis-benchmark's SET and GET rates (requests/s) for values of `size` bytes, `batch` commands a round trip.

    NOTE: its keys are `key:<12 digits>` drawn at random from [0, -r). The tier writes each block once,
    under a new name, so SET draws from [0, 10^9): with -r ops a third of its SETs would overwrite a
    value, and the server would reuse the memory it just freed where the tier's values take new memory
    (1600 SETs of 256 KiB: 1011 keys written, not 1600). GET draws from [0, ops), every one of which is
    written before it runs, so that each GET returns a value of `size` bytes, as the tier's do (a key
    never written is a nil, a few bytes).
    """
    import redis

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark") or "redis-benchmark"
    rates = {}
    client = redis.Redis.from_url(url)
    names = [b"key:%012d" % i for i in range(ops)]
    for test in ("set", "get"):
        if test == "get":
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.set(name, bytes(size))
            pipe.execute()
        keyspace = 10 ** 9 if test == "set" else ops
        done = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-t", test, "-d", str(size), "-n",
                               str(ops), "-c", str(clients), "-r", str(keyspace), "-P", str(batch), "--csv"],
                              capture_output=True, text=True, check=True)
        rows = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(done.stdout)) if row and row[0] != "test"}
        rates[test] = rows[test.upper()]
        written = list(client.scan_iter(match="key:*", count=1000))  # its SET's keys, then GET's
        for at in range(0, len(written), 1000):
            client.delete(*written[at:at + 1000])
    client.close()
    return rates


def each_thread(clients: int, items: list, fn) -> tuple[float, list]:
    """fn over `items` on `clients` threads, each a loop over its share (as engine threads call the tier):
    (seconds, results in order). No executor per item, whose own Python would be timed with the calls."""
    import threading

    results: list = [None] * len(items)
    ready = threading.Barrier(clients + 1)

    def loop(first: int) -> None:
        ready.wait()
        for i in range(first, len(items), clients):
            results[i] = fn(first, items[i])

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def tier_round(store, layout, clients: int, ops: int, offset: int, batch: int) -> dict[str, float]:
    import hashlib

    from kvtier.block.hashing import namespace_digest
    from kvtier.tiers.base import BlockKey
    from kvtier.types import BlockHash

    ns = namespace_digest("bench-remote", None)
    keys = [BlockKey(ns, BlockHash(hashlib.sha256(b"%d" % (offset + i)).digest()), ()) for i in range(ops)]
    data = torch.randn(layout.block_shape).to(layout.dtype)
    outs = [torch.empty(layout.block_shape, dtype=layout.dtype) for _ in range(clients)]
    put_s, _ = each_thread(clients, keys, lambda _, k: store.put(k, data))
    if batch == 1:
        get_s, got = each_thread(clients, keys, lambda c, k: store.get(k, outs[c]))
    else:  # the cache's onload path: get_many, one pipelined round trip per batch
        batches = [keys[i:i + batch] for i in range(0, len(keys), batch)]
        get_s, parts = each_thread(clients, batches, lambda _, b: store.get_many(b))
        got = [b for part in parts for b in part]
    if any(g is None for g in got):
        raise AssertionError("a block put in this round was not read back")
    rates = {"set": ops / put_s, "get": ops / get_s}
    if store._wire is not None and batch == 1:  # the same GETs through the wire alone: the store's I/O, not its Python
        from kvtier.tiers.format.codecs import tensor_bytes
        from kvtier.tiers.format.header import header_bytes_for

        header_len = header_bytes_for(0)
        targets = [[([bytearray(header_len), tensor_bytes(out)], header_len)] for out in outs]
        wire_s, replies = each_thread(clients, [[store._key(k.block_hash)] for k in keys],
                                      lambda c, n: store._wire.get_many_into(n, targets[c]))
        if any(not isinstance(reply[0][1], int) for reply in replies):
            raise AssertionError("a value the store read was not read whole through the wire")
        rates["wire_get"] = ops / wire_s
    store._client.delete(*(store._key(k.block_hash) for k in keys))
    return rates


def plain_round(url: str, size: int, clients: int, ops: int, offset: int) -> dict[str, float]:
    """redis-py itself, SET/GET of `size` raw bytes (no object, no verification): the ceiling through the client."""
    import redis

    client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=clients))
    value = bytes(size)
    names = [f"plain:{offset + i}" for i in range(ops)]
    set_s, _ = each_thread(clients, names, lambda _, n: client.set(n, value))
    get_s, _ = each_thread(clients, names, lambda _, n: client.get(n))
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
        server = RedisServer(Path(tempfile.mkdtemp(prefix="kvtier-bench-redis-")), own_session=True)
        server.start()
        url = server.url
    else:
        url = args.url
    layout = layout_for(args.value_kib)
    from kvtier.block.hashing import namespace_digest
    from kvtier.tiers.base import BlockKey
    from kvtier.types import BlockHash

    probe = BlockKey(namespace_digest("x", None), BlockHash(bytes(32)), ())
    size = sum(memoryview(p).nbytes for p in encode_block(probe, torch.zeros(layout.block_shape, dtype=layout.dtype),
                                                          layout, segments=False))  # as RemoteStore.put writes
    store = RemoteStore(layout, RemoteTierConfig(url=url, capacity_bytes=1 << 40, timeout_s=5.0,
                                                 max_connections=args.clients))
    tier: dict[str, list[float]] = {"set": [], "get": []}
    bench: dict[str, list[float]] = {"set": [], "get": []}
    plain: dict[str, list[float]] = {"set": [], "get": []}
    wire: list[float] = []  # the tier's GETs through its wire alone (no verification, stats or buffers)
    try:
        for r in range(args.rounds):
            sides = [(bench, lambda: redis_benchmark(url, size, args.clients, args.ops, args.batch)),
                     (tier, lambda r=r: tier_round(store, layout, args.clients, args.ops, r * args.ops, args.batch)),
                     (plain, lambda r=r: plain_round(url, size, args.clients, args.ops, r * args.ops))]
            for rows, fn in (sides if r % 2 == 0 else sides[::-1]):
                rates = fn()
                for op in ("set", "get"):
                    rows[op].append(rates[op])
                if "wire_get" in rates:
                    wire.append(rates["wire_get"])
    finally:
        store.close()
        if server is not None:
            server.stop()
    ratios = {op: [t / b for t, b in zip(tier[op], bench[op])] for op in ("set", "get")}
    result = {"value_bytes": size, "clients": args.clients, "ops": args.ops, "batch": args.batch, "tier_ops_s": tier,
              "redis_benchmark_ops_s": bench, "redis_py_plain_ops_s": plain, "wire_get_ops_s": wire,
              "wire_get_ratio": [w / b for w, b in zip(wire, bench["get"])], "ratio": ratios,
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
    if wire:
        print(f"  GET through the tier's wire alone (its compiled call, none of the store's Python): "
              f"{[round(x) for x in wire]} ops/s; ratio {[round(w / b, 2) for w, b in zip(wire, bench['get'])]}")


if __name__ == "__main__":
    main()
