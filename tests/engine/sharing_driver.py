"""One engine process on the seeded tiny model whose cache is shared with other engines through a remote
tier (Redis) or a shared folder: what one engine serves, another running at the same time can hit.

Run by tests/engine/test_concurrent_sharing.py as `python -m tests.engine.sharing_driver SPEC.json OUT.json`
from the repository root. SPEC: tier ({"remote": URL} or {"shared": FOLDER}), prompts (token id lists,
served first), max_tokens, and optional files and prompts:
- wait_for: a file waited for before serving anything;
- ready: written once `prompts` are served and every block of theirs has reached the shared tier;
- busy: prompts served again and again after `ready`, through a small device pool (so blocks spill and
  are read back while the other engine works), until `hold` appears: a pass at least, and none begun
  after DEADLINE_S (should `hold` never come: the test died).
OUT: the tokens and cached token counts of `prompts`, then the tokens of every pass over `busy`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from kvtier.cache import TieredKVCache
from kvtier.config import (
    DeviceTierConfig,
    HostTierConfig,
    KVTierConfig,
    ModelConfig,
    RemoteTierConfig,
    SharedTierConfig,
)
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.model.weights import random_model
from tests.integrations.vllm.driver import DEADLINE_S, wait_for_file

CONFIG = dataclasses.replace(ModelConfig.preset("tiny"), eos_token_ids=())
BLOCK_SIZE = 4
DEVICE_BLOCKS = 48  # less than one pass over `busy` needs: its prefixes spill to host and below


def cache_config(tier: dict[str, str]) -> KVTierConfig:
    """A device pool, 8 host blocks, then the shared tier (written through, so others hit it at once)."""
    shared: RemoteTierConfig | SharedTierConfig
    if "remote" in tier:
        shared = RemoteTierConfig(url=tier["remote"], capacity_bytes=64 << 20, timeout_s=2.0)
    else:
        shared = SharedTierConfig(path=tier["shared"], capacity_bytes=64 << 20, fsync=False)
    return KVTierConfig(layout=CONFIG.kv_layout(BLOCK_SIZE), device=DeviceTierConfig(num_blocks=DEVICE_BLOCKS),
                        tiers=(HostTierConfig(num_blocks=8), shared))


def serve(engine: LLMEngine, prompts: list[list[int]], max_tokens: int, tag: str) -> list[dict[str, Any]]:
    outputs = engine.generate([Request(request_id=f"{tag}{i}", prompt_token_ids=tuple(p), max_tokens=max_tokens)
                               for i, p in enumerate(prompts)])
    return [{"tokens": list(o.token_ids), "cached": o.num_cached_tokens} for o in outputs]


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("wait_for"):
        wait_for_file(spec["wait_for"], "waiting for the other engine")
    cache = TieredKVCache.from_config(cache_config(spec["tier"]))
    engine = LLMEngine(random_model(CONFIG, seed=0), cache, EngineConfig(max_num_batched_tokens=64, max_num_seqs=4))
    try:
        result: dict[str, Any] = {"prompts": serve(engine, spec["prompts"], spec["max_tokens"], "p"), "busy": []}
        cache.flush()  # NOTE: every write-through has landed (or failed) before the other engine is told
        if spec.get("ready"):
            with open(spec["ready"], "w", encoding="utf-8") as f:
                f.write("ready\n")
        deadline = time.monotonic() + DEADLINE_S
        while spec.get("busy"):
            result["busy"].append(serve(engine, spec["busy"], spec["max_tokens"], f"b{len(result['busy'])}-"))
            if not spec.get("hold") or os.path.exists(spec["hold"]) or time.monotonic() > deadline:
                break
    finally:
        cache.close()
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
