"""Run in vLLM's venv: KVTierSpec refuses engine layouts and options it does not serve, at construction.

Prints one JSON object: case name -> the error message (or "ok").
"""
from __future__ import annotations

import dataclasses
import json

from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)

from kvtier.integrations.vllm import KVTierSpec


def config(**changes: object) -> OffloadingConfig:
    parallel = OffloadingParallelConfig(rank=0, world_size=1, tp_size=1, pp_size=1, pcp_size=1, dcp_size=1,
                                        data_parallel_index=0, data_parallel_size=1, data_parallel_rank_local=None,
                                        is_parallelism_agnostic=False)
    base = OffloadingConfig(groups=(OffloadingGroupConfig(tokens_per_block=128, layer_names=("l0",), group_id=0),),
                            worker_kv_bytes_per_block=65536, enable_kv_cache_events=False,
                            extra_config={"kvtier": {"host_bytes": "1MiB"}}, engine_id="e",
                            model=OffloadingModelConfig(name="m", dtype="bfloat16"),
                            cache=OffloadingCacheConfig(tokens_per_hash=128, blocks_per_chunk=1), parallel=parallel)
    parallel_changes = changes.pop("parallel", None)
    if parallel_changes:
        changes["parallel"] = dataclasses.replace(parallel, **parallel_changes)
    return dataclasses.replace(base, **changes)


def main() -> None:
    group = OffloadingGroupConfig(tokens_per_block=128, layer_names=("l1",), group_id=1)
    cases = {
        "ok": config(),
        "tp2": config(parallel={"world_size": 2, "tp_size": 2}),
        "two_groups": config(groups=config().groups + (group,)),
        "chunks": config(cache=OffloadingCacheConfig(tokens_per_hash=128, blocks_per_chunk=2)),
        "bad_option": config(extra_config={"kvtier": {"tier": {"kind": "disk", "path": "/x"}}}),
    }
    out = {}
    for name, cfg in cases.items():
        try:
            spec = KVTierSpec(cfg)
            out[name] = f"ok {spec.num_slots} slots"
        except ValueError as exc:
            out[name] = str(exc)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
