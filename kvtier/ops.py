"""The one place that chooses a kernel implementation: Triton on CUDA, torch elsewhere.

Triton modules are imported lazily, only on the CUDA path, so importing kvtier on a CPU-only
machine never imports triton. Every function has the signature of its kernel launcher. Off CUDA,
store_kv, decode and prefill attention run the fast torch twins of kernels/cpu.py (checked against the
references), the rest the references themselves.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType
from typing import cast

import torch

from kvtier.kernels import (
    cpu,
    reference,
)


@functools.cache
def has_triton() -> bool:
    """Whether triton can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def uses_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on `tensor` runs the Triton kernel (CUDA and triton present)."""
    return tensor.is_cuda and has_triton()


def _kernel_module(name: str) -> ModuleType:
    return importlib.import_module(f"kvtier.kernels.{name}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """`x [..., in] @ weight[out, in].T + bias`, as torch.nn.functional.linear.

    On CPU with `packed` (`pack_linear_weight(weight)`), oneDNN's matmul on the blocked copy; else
    torch.nn.functional.linear. The sum is the same, taken in another order (float rounding may differ).
    """
    if packed is not None and x.device.type == "cpu":
        return cpu.linear_packed_cpu(x, packed, bias)
    return torch.nn.functional.linear(x, weight, bias)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` in the layout `linear` runs fastest from on this device; None where it has none (CUDA)."""
    return None if weight.is_cuda else cpu.pack_linear_weight(weight)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write new tokens' K/V into their cache slots; see kernels/store_kv.py."""
    if uses_triton(k_cache):
        _kernel_module("store_kv").store_kv(key, value, k_cache, v_cache, slot_mapping)
    else:
        cpu.store_kv_cpu(key, value, k_cache, v_cache, slot_mapping)


def paged_decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """One-token-per-sequence attention over the paged cache; see kernels/paged_attention.py."""
    if uses_triton(query):
        launcher = _kernel_module("paged_attention").paged_decode_attention
        return cast(torch.Tensor, launcher(query, k_cache, v_cache, block_tables, seq_lens, scale))
    return cpu.paged_decode_attention_cpu(query, k_cache, v_cache, block_tables, seq_lens, scale)


def paged_prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal varlen attention of new tokens over the paged cache; see kernels/paged_prefill.py."""
    if uses_triton(query):
        launcher = _kernel_module("paged_prefill").paged_prefill_attention
        return cast(torch.Tensor, launcher(query, k_cache, v_cache, block_tables, query_start_loc,
                                           seq_lens, scale))
    return cpu.paged_prefill_attention_cpu(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)


def gather_blocks(kv_cache: torch.Tensor, block_ids: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """Pack pool blocks into a block-major staging buffer; see kernels/copy_blocks.py."""
    if uses_triton(kv_cache):
        return cast(torch.Tensor, _kernel_module("copy_blocks").gather_blocks(kv_cache, block_ids, out))
    return reference.gather_blocks_ref(kv_cache, block_ids, out)


def scatter_blocks(staging: torch.Tensor, block_ids: torch.Tensor,
                   kv_cache: torch.Tensor) -> torch.Tensor:
    """Unpack a block-major staging buffer into pool blocks; see kernels/copy_blocks.py."""
    if uses_triton(kv_cache):
        return cast(torch.Tensor, _kernel_module("copy_blocks").scatter_blocks(staging, block_ids, kv_cache))
    return reference.scatter_blocks_ref(staging, block_ids, kv_cache)
