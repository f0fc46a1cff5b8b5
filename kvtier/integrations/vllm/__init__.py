"""kvtier as vLLM's offload tier: an `OffloadingSpec` for vLLM's `OffloadingConnector`.

    LLM(model=..., kv_transfer_config={
        "kv_connector": "OffloadingConnector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"spec_name": "KVTierSpec", "spec_module_path": "kvtier.integrations.vllm",
                                      "kvtier": {"host_bytes": "4GiB", "tier": {"kind": "disk", ...}}}})

The spec (spec.py) builds a manager in vLLM's scheduler process (manager.py: which block is where,
folder reads verified before vLLM is told "hit") and a worker in its worker process (worker.py:
copies between vLLM's KV pages and the shared host slots). Everything vLLM-version-specific is in
vllm_api.py. Only `KVTierSpec` imports vLLM; the other modules are plain kvtier.
"""
from __future__ import annotations

from typing import Any

__all__ = ["KVTierSpec"]


def __getattr__(name: str) -> Any:
    if name == "KVTierSpec":
        from kvtier.integrations.vllm.spec import KVTierSpec
        return KVTierSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
