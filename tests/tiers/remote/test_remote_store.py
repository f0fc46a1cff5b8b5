"""RemoteStore against a real redis-server on loopback: verified values, faults as misses, budgets, TTL, AUTH."""
from __future__ import annotations

import hashlib
import re

import pytest
import torch

from kvtier.config import KVLayout, RemoteTierConfig
from kvtier.errors import TierFullError, TierIOError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.format.encode import encode_block
from kvtier.tiers.remote import RemoteStore
from kvtier.tiers.remote.breaker import CircuitBreaker
from kvtier.tiers.remote.store import redis_key
from kvtier.types import BlockHash, Namespace
from tests.tiers.remote.redis_server import RedisServer

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float16)
NS = Namespace(hashlib.sha256(b"ns").digest())


def key(i: int, namespace: bytes = NS) -> BlockKey:
    return BlockKey(Namespace(namespace), BlockHash(hashlib.sha256(namespace + b"%d" % i).digest()), (i, i + 1))


def block(i: int) -> torch.Tensor:
    return torch.full(LAYOUT.block_shape, float(i), dtype=LAYOUT.dtype) + torch.arange(8, dtype=LAYOUT.dtype)


NATIVE_IO = [True]  # what store_for asks for; the fixture below runs every test with each


@pytest.fixture(autouse=True, params=[True, False], ids=["native-io", "python-twin"])
def both_wires(request: pytest.FixtureRequest) -> None:
    """Each test with the compiled GET/SET (tiers/remote/_resp.c) and with its Python twin (pyresp.py)."""
    NATIVE_IO[0] = request.param


def store_for(server: RedisServer, **changes: object) -> RemoteStore:
    config = RemoteTierConfig(**{"url": server.url, "capacity_bytes": 1 << 20, "timeout_s": 0.2,
                                 "native_io": NATIVE_IO[0], **changes})
    return RemoteStore(LAYOUT, config)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_blocks_round_trip_in_one_pipelined_read(redis_server: RedisServer) -> None:
    store = store_for(redis_server)
    for i in range(4):
        store.put(key(i), block(i))
    outs = [torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype) for _ in range(5)]
    got = store.get_many([key(i) for i in range(5)], outs)
    assert [g is outs[i] for i, g in enumerate(got[:4])] == [True] * 4 and got[4] is None
    assert all(torch.equal(outs[i], block(i)) for i in range(4))
    assert store.contains(key(2).block_hash) and not store.contains(key(9).block_hash)
    assert store.stats.hits == 4 and store.stats.misses == 1 and store.stats.puts == 4
    assert all(re.fullmatch(r"kv:[0-9a-f]{64}", k.decode()) for k in store._client.keys("*"))  # hex digests only


def test_damaged_or_foreign_values_are_misses_and_deleted(redis_server: RedisServer) -> None:
    store = store_for(redis_server)
    store.put(key(0), block(0))
    store.put(key(1), block(1))
    raw = store._client.get(redis_key(key(0).block_hash))
    flipped = bytearray(raw)
    flipped[-3] ^= 1
    store._client.set(redis_key(key(0).block_hash), bytes(flipped))
    store._client.set(redis_key(key(2).block_hash), store._client.get(redis_key(key(1).block_hash)))  # another's
    store._client.set(redis_key(key(3).block_hash), raw[:40])  # truncated
    outs = [torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype) for _ in range(4)]
    got = store.get_many([key(0), key(1), key(2), key(3)], outs)
    assert [g is not None for g in got] == [False, True, False, False] and torch.equal(outs[1], block(1))
    assert store.stats.corrupt == 3
    assert store._client.exists(*(redis_key(key(i).block_hash) for i in (0, 2, 3))) == 0  # deleted


def test_dead_server_is_a_miss_then_paused_then_back(tmp_path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    store = store_for(server, retries=1, backoff_s=0.01, breaker_failures=2, breaker_reset_s=5.0)
    clock = FakeClock()
    store.breaker = CircuitBreaker(2, 5.0, clock)
    store.put(key(0), block(0))
    server.stop()
    assert store.get(key(0)) is None  # refused: retried, then a miss
    with pytest.raises(TierIOError, match="did not store"):
        store.put(key(1), block(1))
    assert store.breaker.is_open and store.stats.io_errors == 2
    server.start()  # back, empty
    assert store.get(key(0)) is None and store.stats.io_errors == 2  # still paused: not even asked
    clock.now = 5.0
    store.put(key(2), block(2))  # the probe succeeds and closes the breaker
    assert not store.breaker.is_open
    assert torch.equal(store.get(key(2)), block(2))
    server.stop()


def test_full_server_refuses_writes_without_crashing(tmp_path) -> None:
    server = RedisServer(tmp_path, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        store = store_for(server, capacity_bytes=1 << 30)
        big = KVLayout(num_layers=2, num_kv_heads=2, head_dim=64, block_size=256, dtype=torch.float16)  # 256 KiB
        store = RemoteStore(big, store.config)
        stored = 0
        with pytest.raises(TierIOError, match="is full"):
            for i in range(64):
                store.put(key(i), torch.ones(big.block_shape, dtype=big.dtype))
                stored += 1
        assert 0 < stored < 64 and store.stats.rejected == 1
        assert torch.equal(store.get(key(0)), torch.ones(big.block_shape, dtype=big.dtype))
        assert not store.breaker.is_open  # a full server is not a dead one
    finally:
        server.stop()


def test_budget_evicts_own_least_recently_used_and_respects_pins(redis_server: RedisServer) -> None:
    one = len(b"".join(encode_block(key(0), block(0), LAYOUT, segments=False)))
    store = store_for(redis_server, capacity_bytes=3 * one)
    for i in range(3):
        store.put(key(i), block(i))
    store.get(key(0))  # 1 is now the least recently used
    store.put(key(3), block(3))
    assert not store.contains(key(1).block_hash) and store.used_bytes == 3 * one and store.stats.evictions == 1
    for i in (0, 2, 3):
        store.pin(key(i).block_hash)
    with pytest.raises(TierFullError, match="pinned"):
        store.put(key(4), block(4))
    store.unpin(key(2).block_hash)
    store.put(key(4), block(4))
    assert not store.contains(key(2).block_hash) and store.used_bytes <= 3 * one


def test_ttl_and_password_from_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        with pytest.raises(TierIOError, match="KVTIER_TEST_PW, which is not set"):
            store_for(server, password_env="KVTIER_TEST_PW")
        wrong = store_for(server)  # no password: every call fails (a miss), never an exception
        assert wrong.get(key(0)) is None and wrong.stats.io_errors == 1
        monkeypatch.setenv("KVTIER_TEST_PW", "s3cret")
        store = store_for(server, password_env="KVTIER_TEST_PW", ttl_s=60)
        store.put(key(0), block(0))
        assert 0 < store._client.pttl(redis_key(key(0).block_hash)) <= 60_000
        in_url = RemoteStore(LAYOUT, RemoteTierConfig(url=f"redis://:s3cret@127.0.0.1:{server.port}/0",
                                                      capacity_bytes=1 << 20))
        assert torch.equal(in_url.get(key(0)), block(0))
    finally:
        server.stop()


def test_breaker_opens_after_failures_and_one_probe_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 2.0, clock)
    for _ in range(2):
        breaker.failed()
    assert breaker.allow()
    breaker.failed()
    assert not breaker.allow() and breaker.opened == 1
    clock.now = 2.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failed()  # the probe failed: open again, from now
    clock.now = 3.9
    assert not breaker.allow()
    clock.now = 4.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.allow() and not breaker.is_open


def test_a_ranks_shard_has_keys_of_its_own(redis_server: RedisServer) -> None:
    from kvtier.config import DeviceTierConfig, KVTierConfig
    from kvtier.parallel.rank_cache import rank_cache_config

    whole = KVLayout(num_layers=2, num_kv_heads=4, head_dim=8, block_size=4, dtype=torch.float16)
    half = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float16, first_kv_head=2)
    config = KVTierConfig(layout=whole, device=DeviceTierConfig(num_blocks=4),
                          tiers=(RemoteTierConfig(url=redis_server.url, capacity_bytes=1 << 20),))
    assert rank_cache_config(config, whole).tiers[0].shard is None
    tier = rank_cache_config(config, half).tiers[0]
    assert tier.shard and tier.capacity_bytes == 1 << 19
    store = RemoteStore(half, tier)
    store.put(key(0), torch.ones(half.block_shape, dtype=half.dtype))
    (name,) = store._client.keys("*")
    assert re.fullmatch(rf"kv:[0-9a-f]{{16}}:{key(0).block_hash.hex()}", name.decode())
    assert not RemoteStore(whole, config.tiers[0]).contains(key(0).block_hash)  # the whole model's key differs


def test_any_value_at_a_key_is_the_block_or_a_miss(redis_server: RedisServer) -> None:
    """Thousands of hostile values (garbage, bit flips, truncations, splices of a valid object): only the
    untouched object is served; everything else is a miss, never an exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    store = store_for(redis_server)
    store.put(key(0), block(0))
    valid = store._client.get(redis_key(key(0).block_hash))
    name = redis_key(key(1).block_hash)

    mutation = st.one_of(
        st.binary(max_size=2 * len(valid)),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
            lambda p: valid[:p[0]] + bytes([valid[p[0]] ^ p[1]]) + valid[p[0] + 1:]),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.tuples(st.integers(0, len(valid)), st.binary(max_size=64)).map(lambda p: valid[:p[0]] + p[1]))

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=mutation)
    def check(value: bytes) -> None:
        store._client.set(name, value)
        assert store.get(key(1)) is None  # another key's object, or damage: never served as key(1)
        store._client.set(redis_key(key(0).block_hash), value)
        got = store.get(key(0))
        assert got is None or (value == valid and torch.equal(got, block(0)))
        out = torch.full(LAYOUT.block_shape, float("nan"), dtype=LAYOUT.dtype)  # the copy-once path into a slot
        got = store.get(key(0), out)
        assert got is None or (value == valid and got is out and torch.equal(out, block(0)))

    check()
    assert store.stats.io_errors == 0


def test_another_codecs_object_is_served_and_a_value_of_another_type_deleted(redis_server: RedisServer) -> None:
    """A zstd object (another engine's codec) has another length than a raw block: read the slow way and
    served; a list at a block's key (WRONGTYPE) is a miss and deleted; neither is an I/O error."""
    zstd_writer = store_for(redis_server, codec="zstd")
    zstd_writer.put(key(0), block(0))
    reader = store_for(redis_server)
    out = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
    assert reader.get(key(0), out) is out and torch.equal(out, block(0))
    assert torch.equal(reader.get(key(0)), block(0))
    reader._client.rpush(redis_key(key(1).block_hash), b"not a block")
    assert reader.get_many([key(1), key(0)])[0] is None
    assert not reader._client.exists(redis_key(key(1).block_hash))
    assert reader.stats.corrupt == 1 and reader.stats.io_errors == 0 and reader.stats.hits == 3


def test_an_object_with_a_segment_table_is_served_and_a_known_header_still_names_its_key(
        redis_server: RedisServer) -> None:
    """An object with a segment table (what this tier wrote before it dropped the table) has another
    length than the tier's own and is read the slow way, and served; a read whose header is the one
    this process wrote, under a key of the same hash but other token ids, is a miss."""
    store = store_for(redis_server)
    store._client.set(redis_key(key(0).block_hash), b"".join(encode_block(key(0), block(0), LAYOUT)))
    out = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
    assert store.get(key(0), out) is out and torch.equal(out, block(0))
    store.put(key(1), block(1))
    impostor = BlockKey(key(1).namespace, key(1).block_hash, (7, 7))
    assert store.get(impostor) is None and store.stats.corrupt == 1
    assert store.stats.hits == 1 and store.stats.io_errors == 0


def test_a_segment_table_the_header_padding_hides_is_read_the_slow_way_and_served(redis_server: RedisServer) -> None:
    """One layer of one KV head: 2 segment checksums fit in the header's padding, so an object with its
    table is as long as the tier's own and is read in place; it fails the in-place check, is a valid
    header, and is read whole, verified and served (not deleted as damage)."""
    tiny = KVLayout(num_layers=1, num_kv_heads=1, head_dim=8, block_size=4, dtype=torch.float16)
    store = RemoteStore(tiny, store_for(redis_server).config)
    data = torch.randn(tiny.block_shape).to(tiny.dtype)
    with_table = encode_block(key(0), data, tiny)
    assert len(with_table[0]) == len(encode_block(key(0), data, tiny, segments=False)[0])  # the case itself
    store._client.set(redis_key(key(0).block_hash), b"".join(with_table))
    out = torch.empty(tiny.block_shape, dtype=tiny.dtype)
    assert store.get(key(0), out) is out and torch.equal(out, data)
    assert store.stats.corrupt == 0 and store._client.exists(redis_key(key(0).block_hash))


def test_a_zstd_object_as_long_as_a_raw_block_is_never_served_as_raw(redis_server: RedisServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A zstd payload of exactly a raw block's bytes (rare, but a matter of time) that this process wrote:
    its header is remembered nowhere the in-place read trusts, so its bytes are decoded, never served raw."""
    import xxhash

    import kvtier.tiers.remote.store as remote_store
    from kvtier.tiers.format.header import encode_header

    payload = torch.randint(0, 256, (LAYOUT.page_size_bytes,), dtype=torch.uint8).numpy().tobytes()
    header = encode_header(key(0), LAYOUT, "zstd", len(payload), xxhash.xxh3_64_intdigest(payload))
    monkeypatch.setattr(remote_store, "encode_block", lambda *args, **kwargs: [header, payload])
    store = store_for(redis_server, codec="zstd")
    store.put(key(0), block(0))
    assert store.get(key(0), torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)) is None  # not a zstd frame
    assert store.stats.corrupt == 1


def test_a_three_node_cluster_spreads_blocks_and_serves_them_in_one_batch(redis_cluster) -> None:
    """Blocks land on every node (keys spread by block hash); one get_many reads them back across nodes;
    a damaged value on one node is a miss and deleted; a node killed makes misses, never an exception."""
    import redis

    store = RemoteStore(LAYOUT, RemoteTierConfig(url=redis_cluster.url, capacity_bytes=1 << 20, timeout_s=0.5,
                                                 cluster=True, retries=0, breaker_failures=100))
    try:
        keys = [key(i) for i in range(40)]
        for i, k in enumerate(keys):
            store.put(k, block(i))
        sizes = [int(redis.Redis(port=node.port).dbsize()) for node in redis_cluster.nodes]
        assert sum(sizes) == 40 and all(size > 0 for size in sizes), sizes
        outs = [torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype) for _ in keys]
        got = store.get_many(keys, outs)
        assert all(g is outs[i] and torch.equal(outs[i], block(i)) for i, g in enumerate(got))

        name = redis_key(keys[7].block_hash)
        value = bytearray(store._client.get(name))
        value[-1] ^= 1
        store._client.set(name, bytes(value))
        got = store.get_many(keys)
        assert [i for i, g in enumerate(got) if g is None] == [7] and store.stats.corrupt == 1
        assert not store._client.exists(name)

        redis_cluster.nodes[2].stop()
        got = store.get_many(keys)  # NOTE: must return, as misses, with a third of the slots unserved
        assert all(g is None for g in got) or all(g is None or torch.equal(g, block(i)) for i, g in enumerate(got))
        assert store.stats.io_errors >= 1
    finally:
        store.close()


def test_rediss_with_the_private_ca_serves_blocks_and_without_it_only_misses(tls_redis_server, tmp_path) -> None:
    server = tls_redis_server
    store = store_for(server, url=server.tls_url, tls_ca_file=str(server.ca))
    store.put(key(0), block(0))
    assert torch.equal(store.get(key(0)), block(0)) and store.stats.io_errors == 0
    untrusted = store_for(server, url=server.tls_url)  # the system's CAs do not know the test CA
    assert untrusted.get(key(0)) is None and untrusted.stats.io_errors == 1
    plain = store_for(server, url=f"redis://127.0.0.1:{server.tls_port}/0")  # plain text to the TLS port
    assert plain.get(key(0)) is None and plain.stats.io_errors == 1
    with pytest.raises(TierIOError, match="is not a file"):
        store_for(server, url=server.tls_url, tls_ca_file=str(tmp_path / "absent.pem"))
    with pytest.raises(ValueError, match="with a rediss:// url"):
        RemoteTierConfig(url=server.url, capacity_bytes=1, tls_ca_file=str(server.ca))
