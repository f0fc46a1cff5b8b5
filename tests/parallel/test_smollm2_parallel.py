"""Tensor parallelism on the real demo model: SmolLM2-135M's 9 query and 3 KV heads on three ranks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvtier.cache import TieredKVCache
from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.model.load import load_model
from kvtier.parallel.serve import GenerateJob, generate_parallel
from kvtier.parallel.shards import ParallelConfig

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def test_smollm2_at_three_tensor_ranks_gives_one_processs_tokens(smollm2_folder: Path, tmp_path: Path) -> None:
    model = load_model(str(smollm2_folder), dtype="float32")
    prefix = list(range(1000, 1040))
    prompts = [prefix + [2000 + i] * (4 + i) for i in range(3)]
    requests = tuple(Request(request_id=str(i), prompt_token_ids=tuple(p), max_tokens=8) for i, p in enumerate(prompts))
    config = KVTierConfig(layout=model.kv_layout(16), device=DeviceTierConfig(num_blocks=16),
                          tiers=(HostTierConfig(num_blocks=2),
                                 DiskTierConfig(path=str(tmp_path / "cache"), capacity_bytes=64 << 20, fsync=False)))
    engine_config = EngineConfig(max_num_seqs=1, max_num_batched_tokens=64)
    one = TieredKVCache.from_config(with_disk_path(config, tmp_path / "one"))
    try:
        expected = LLMEngine(model, one, engine_config).generate(requests)
    finally:
        one.close()
    job = GenerateJob(model=str(smollm2_folder), requests=requests, cache=config, engine=engine_config,
                      dtype="float32")
    run = generate_parallel(job, ParallelConfig(tp_size=3))
    assert [o.token_ids for o in run.outputs] == [o.token_ids for o in expected]
    assert [o.num_cached_tokens for o in run.outputs] == [o.num_cached_tokens for o in expected] == [0, 32, 32]


def with_disk_path(config: KVTierConfig, path: Path) -> KVTierConfig:
    host, disk = config.tiers
    return dataclasses.replace(config, tiers=(host, dataclasses.replace(disk, path=str(path))))
