"""The remote tier under TieredKVCache: spills and a second cache (another engine) served from Redis,
damaged values recomputed, a dead server only misses."""
from __future__ import annotations

from kvtier.cache import TieredKVCache
from kvtier.config import RemoteTierConfig
from kvtier.tiers.host import HostStore
from kvtier.tiers.remote import RemoteStore
from kvtier.types import TierKind
from tests.test_cache_disk import LAYOUT, NUM_DEVICE_BLOCKS, replay
from tests.tiers.remote.redis_server import RedisServer


def remote(server: RedisServer) -> RemoteStore:
    return RemoteStore(LAYOUT, RemoteTierConfig(url=server.url, capacity_bytes=1 << 22, timeout_s=0.2, retries=0))


def test_spills_cycle_through_redis_and_another_cache_hits_them(redis_server: RedisServer) -> None:
    store = remote(redis_server)
    cache = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [HostStore(LAYOUT, 8), store])
    assert replay(cache, rounds=3) == 2 * 8 * 4  # every served block bit-identical (run_prefill checks)
    assert cache.stats.hit_blocks[TierKind.REMOTE] > 0 and store.stats.corrupt == 0
    cache.close()
    writer = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [], write_through=[remote(redis_server)])
    replay(writer, rounds=1)
    writer.close()
    other = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [remote(redis_server)])
    assert replay(other, rounds=1) == 8 * 4
    assert other.stats.hit_blocks[TierKind.REMOTE] == 8 * 4
    other.close()


def test_damaged_values_are_recomputed_and_a_dead_server_only_misses(redis_server: RedisServer) -> None:
    writer = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [], write_through=[remote(redis_server)])
    replay(writer, rounds=1)
    writer.close()
    store = remote(redis_server)
    names = sorted(store._client.keys("kv:*"))
    for name in names[::3]:
        value = bytearray(store._client.get(name))
        value[-5] ^= 0x40
        store._client.set(name, bytes(value))
    cache = TieredKVCache(LAYOUT, NUM_DEVICE_BLOCKS, [store])
    assert replay(cache, rounds=1) < 8 * 4  # asserts every served block is bit-identical
    assert store.stats.corrupt > 0
    redis_server.stop()
    assert replay(cache, rounds=1) >= 0 and store.stats.io_errors > 0  # misses, recomputed: no exception
    cache.close()


def test_two_generate_runs_share_blocks_through_redis(redis_server: RedisServer, tmp_path,
                                                      capsys) -> None:
    """`kvtier generate --remote URL`: a second engine, started after the first, hits the first's blocks."""
    import json

    from kvtier.cli.main import main

    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt_token_ids": list(range(1, 70)), "max_tokens": 4}) + "\n")
    runs = []
    for _ in range(2):
        assert main(["generate", "--model", "tiny", "--prompts", str(prompts), "--no-disk", "--host-blocks", "0",
                     "--remote", redis_server.url]) == 0
        runs.append(json.loads(capsys.readouterr().out.splitlines()[0]))
    assert runs[1]["token_ids"] == runs[0]["token_ids"]
    assert runs[0]["num_cached_tokens"] == 0 and runs[1]["num_cached_tokens"] == 64


def test_tenants_never_hit_each_others_blocks_through_redis_over_tls(tls_redis_server, tmp_path, capsys) -> None:
    """`kvtier generate --remote rediss://... --remote-ca PEM`, one engine after another with the same
    prompt: another `cache_salt` gets zero cached tokens and the same tokens; the same salt hits."""
    import json

    from kvtier.cli.main import main

    server = tls_redis_server
    runs = {}
    for name, salt in (("a", "tenant-a"), ("b", "tenant-b"), ("a2", "tenant-a"), ("none", None)):
        prompts = tmp_path / f"{name}.jsonl"
        line = {"id": name, "prompt_token_ids": list(range(1, 70)), "max_tokens": 4}
        prompts.write_text(json.dumps(line | ({"cache_salt": salt} if salt else {})) + "\n")
        assert main(["generate", "--model", "tiny", "--prompts", str(prompts), "--no-disk", "--host-blocks", "0",
                     "--remote", server.tls_url, "--remote-ca", str(server.ca)]) == 0
        runs[name] = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [runs[n]["num_cached_tokens"] for n in ("a", "b", "a2", "none")] == [0, 0, 64, 0]
    assert runs["a"]["token_ids"] == runs["b"]["token_ids"] == runs["a2"]["token_ids"] == runs["none"]["token_ids"]
    assert int(server.cli("DBSIZE")) > 0


def test_bench_serve_runs_its_tiered_side_over_rediss(tls_redis_server, capsys) -> None:
    """`kvtier bench serve --remote rediss://... --remote-ca PEM`: replies match, the server holds blocks;
    a CA without a rediss:// remote is refused before any work."""
    import json

    import pytest

    from kvtier.cli.main import main
    from tests.bench.test_serve_bench import SMALL

    server = tls_redis_server
    assert main(["bench", "serve", *SMALL, "--json", "--remote", server.tls_url, "--remote-ca", str(server.ca)]) == 0
    assert json.loads(capsys.readouterr().out)["replies_match"] and int(server.cli("DBSIZE")) > 0
    with pytest.raises(SystemExit):
        main(["bench", "serve", *SMALL, "--remote-ca", str(server.ca)])
    assert "--remote-ca needs --remote" in capsys.readouterr().err
