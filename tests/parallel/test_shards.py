"""Which part of the model each rank owns, each rank's cache config, and the agreement rule, in one process."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kvtier.cache import TieredKVCache
from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig, ModelConfig
from kvtier.errors import UnsupportedModelError
from kvtier.parallel.agree import Agreement
from kvtier.parallel.rank_cache import rank_cache_config
from kvtier.parallel.shards import ParallelConfig, rank_shard, split_layers
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk import DiskStore
from kvtier.types import BlockHash, Namespace, SeqId

SMOLLM2 = ModelConfig.preset("smollm2-135m")  # 9 query heads, 3 KV heads, 30 layers


def test_layers_split_as_evenly_as_possible_with_earlier_stages_longer() -> None:
    assert split_layers(30, 2) == [range(0, 15), range(15, 30)]
    assert split_layers(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    with pytest.raises(UnsupportedModelError, match="exceeds the model's 2 layers"):
        split_layers(2, 3)


def test_each_tensor_rank_owns_its_heads_and_the_kv_heads_they_attend_to() -> None:
    shards = [rank_shard(SMOLLM2, ParallelConfig(tp_size=3), r) for r in range(3)]
    assert [(s.heads, s.kv_heads) for s in shards] == [(range(0, 3), range(0, 1)), (range(3, 6), range(1, 2)),
                                                       (range(6, 9), range(2, 3))]
    assert [s.intermediate for s in shards] == [range(0, 512), range(512, 1024), range(1024, 1536)]
    group = SMOLLM2.num_heads // SMOLLM2.num_kv_heads
    for s in shards:  # every query head's KV head is on its rank
        assert {h // group for h in s.heads} == set(s.kv_heads)


def test_more_tensor_ranks_than_kv_heads_replicate_them() -> None:
    config = dataclasses.replace(ModelConfig.preset("tiny"), num_heads=8, num_kv_heads=2)
    shards = [rank_shard(config, ParallelConfig(tp_size=4), r) for r in range(4)]
    assert [s.kv_heads for s in shards] == [range(0, 1), range(0, 1), range(1, 2), range(1, 2)]
    assert [s.kv_replica for s in shards] == [0, 1, 0, 1]
    assert all({h // 4 for h in s.heads} == set(s.kv_heads) for s in shards)


def test_stage_major_ranks_combine_pipeline_and_tensor_parallelism() -> None:
    config = dataclasses.replace(ModelConfig.preset("tiny"), num_layers=4)
    shard = rank_shard(config, ParallelConfig(tp_size=2, pp_size=2), 3)
    assert (shard.stage, shard.tp_rank, shard.layers, shard.kv_heads) == (1, 1, range(2, 4), range(1, 2))
    layout = shard.kv_layout(config, 16)
    assert (layout.layer_range, layout.head_range) == ((2, 4), (1, 2))


@pytest.mark.parametrize("tp, message", [(2, "9 query heads"), (6, "tensor-parallel sizes that do: \\[1, 3\\]")])
def test_a_model_that_does_not_split_is_refused_with_the_sizes_that_do(tp: int, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        rank_shard(SMOLLM2, ParallelConfig(tp_size=tp), 0)


def test_each_rank_keeps_its_block_count_and_its_own_folder(tmp_path: Path) -> None:
    whole = SMOLLM2.kv_layout(16)
    config = KVTierConfig(layout=whole, device=DeviceTierConfig(num_blocks=8),
                          tiers=(HostTierConfig(num_blocks=4),
                                 DiskTierConfig(path=str(tmp_path), capacity_bytes=3 << 20)))
    layout = rank_shard(SMOLLM2, ParallelConfig(tp_size=3), 1).kv_layout(SMOLLM2, 16)
    ranked = rank_cache_config(config, layout)
    host, disk = ranked.tiers
    assert ranked.layout == layout and host == config.tiers[0] and ranked.device == config.device
    assert isinstance(disk, DiskTierConfig)
    assert disk.path == str(tmp_path / "shards" / "layers-0-30.heads-1-2") and disk.capacity_bytes == 1 << 20
    assert rank_cache_config(config, whole) == config  # the whole model's objects stay where they were
    with pytest.raises(ValueError, match="is not a shard"):
        rank_cache_config(config, dataclasses.replace(layout, first_kv_head=3))


def test_a_shards_objects_record_its_layer_and_head_range(tmp_path: Path) -> None:
    from kvtier.tiers.format import decode_header

    layout = rank_shard(SMOLLM2, ParallelConfig(tp_size=3, pp_size=2), 4).kv_layout(SMOLLM2, 16, torch.float16)
    store = DiskStore(layout, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 24, fsync=False))
    key = BlockKey(Namespace(b"n" * 32), BlockHash(b"h" * 32), tuple(range(16)))
    data = torch.randn(layout.block_shape).to(torch.float16)
    store.put(key, data)
    header = decode_header(open(store.path_of(key.block_hash), "rb").read())
    assert (header.first_layer, header.num_layers, header.head_start, header.head_end) == (15, 15, 1, 2)
    served = store.get(key)
    assert served is not None and torch.equal(served, data)
    other = DiskStore(dataclasses.replace(layout, first_layer=0), DiskTierConfig(path=str(tmp_path),
                                                                                capacity_bytes=1 << 24))
    assert other.get(key) is None and other.stats.corrupt == 1  # another stage's layers are not served as these


class OtherRankMisses(Agreement):
    """An agreement with a peer rank whose tiers serve at most `peer` blocks of each prompt."""

    def __init__(self, peer: int) -> None:
        self.peer = peer

    def min(self, values: list[int]) -> list[int]:  # type: ignore[override]
        return [min(v, self.peer) for v in values]


def test_one_ranks_miss_is_everyones_miss(tmp_path: Path) -> None:
    layout = ModelConfig.preset("tiny").kv_layout(4)
    config = KVTierConfig(layout=layout, device=DeviceTierConfig(num_blocks=5),
                          tiers=(DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 20, fsync=False),))
    tokens = list(range(17))  # four full blocks may hit
    namespace = Namespace(b"n" * 32)
    writer = TieredKVCache.from_config(config)
    writer.allocate(SeqId("a"), tokens, namespace)
    writer.mark_computed(SeqId("a"), len(tokens))
    writer.free(SeqId("a"))
    assert writer.persist() == 4
    writer.close()
    cache = TieredKVCache.from_config(config, OtherRankMisses(peer=2))
    try:
        seq = cache.allocate(SeqId("b"), tokens, namespace)
        assert seq.num_cached_tokens == 8  # this rank's tier holds four blocks; the peer only two
        (disk,) = cache.tiers
        assert isinstance(disk, DiskStore) and not any(disk.is_pinned(h) for h in seq.block_hashes[:4])
        assert cache.onloads_ready([SeqId("b")]) == [True]
    finally:
        cache.close()


@pytest.mark.parametrize("field, value", [("tp_size", 0), ("pp_size", True), ("vocab_parallel", 1)])
def test_a_bad_parallel_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"ParallelConfig.{field} must be"):
        ParallelConfig(**{field: value})  # type: ignore[arg-type]
