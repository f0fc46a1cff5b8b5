"""gather_blocks / scatter_blocks: pack device blocks into a block-major staging buffer and back.

The device pool is one block-major tensor `kv_cache: [num_blocks, num_layers, 2, num_kv_heads,
block_size, head_dim]`. Staging is `[n, num_layers, 2, num_kv_heads, block_size, head_dim]`,
contiguous: one block is one run across all layers, K and V, with each layer's KV heads
contiguous so a head range can be read alone. A transfer then is one large copy instead of
thousands of small ones. One program copies one (block, layer, K|V, KV head) tile of
`[block_size, head_dim]`; the pool may be any view whose `head_dim` is dense.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import (
    CACHE_DTYPES,
    check_contiguous,
    check_dtype,
    check_inner_contiguous,
    check_int_vector,
    check_ndim,
    check_same_device,
    check_shape,
)


@triton.jit
def _copy_blocks_kernel(kv_cache_ptr, staging_ptr, block_ids_ptr, num_kv_heads,
                        stride_c_layer, stride_c_kv, stride_c_block, stride_c_tok, stride_c_head,
                        BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_D: tl.constexpr, GATHER: tl.constexpr):
    tl.static_assert(BLOCK_T >= BLOCK_SIZE and BLOCK_D >= HEAD_DIM)
    index = tl.program_id(0).to(tl.int64)  # position in block_ids and in staging
    layer_kv = tl.program_id(1).to(tl.int64)  # layer * 2 + (0 for K, 1 for V)
    head = tl.program_id(2).to(tl.int64)
    block_id = tl.load(block_ids_ptr + index)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t[:, None] < BLOCK_SIZE) & (offs_d[None, :] < HEAD_DIM)
    cache = (kv_cache_ptr + (layer_kv // 2) * stride_c_layer + (layer_kv % 2) * stride_c_kv
             + block_id * stride_c_block + head * stride_c_head)
    cache_offs = offs_t[:, None] * stride_c_tok + offs_d[None, :]
    num_layer_kv = tl.num_programs(1)
    # Staging is dense: [n, num_layers * 2, num_kv_heads, BLOCK_SIZE, HEAD_DIM].
    tile_elems = BLOCK_SIZE * HEAD_DIM
    staging = staging_ptr + ((index * num_layer_kv + layer_kv) * num_kv_heads + head) * tile_elems
    staging_offs = offs_t[:, None] * HEAD_DIM + offs_d[None, :]
    if GATHER:
        tl.store(staging + staging_offs, tl.load(cache + cache_offs, mask=mask), mask=mask)
    else:
        tl.store(cache + cache_offs, tl.load(staging + staging_offs, mask=mask), mask=mask)


def _check(op: str, kv_cache: torch.Tensor, block_ids: torch.Tensor,
           staging: torch.Tensor) -> None:
    check_ndim(op, "kv_cache", kv_cache, 6,
               "[num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim]")
    _, num_layers, two, num_kv_heads, block_size, head_dim = kv_cache.shape
    if two != 2:
        raise ValueError(f"{op}: kv_cache dim 2 must be 2 (K, V), got shape {tuple(kv_cache.shape)}")
    check_dtype(op, "kv_cache", kv_cache, CACHE_DTYPES)
    check_inner_contiguous(op, "kv_cache", kv_cache, 1)
    check_ndim(op, "block_ids", block_ids, 1, "[n]")
    check_int_vector(op, "block_ids", block_ids, torch.int64, block_ids.shape[0])
    expected = (block_ids.shape[0], num_layers, 2, num_kv_heads, block_size, head_dim)
    check_shape(op, "staging", staging, expected)
    check_contiguous(op, "staging", staging)
    if staging.dtype != kv_cache.dtype:
        raise ValueError(f"{op}: staging.dtype ({staging.dtype}) must match kv_cache ({kv_cache.dtype})")
    check_same_device(op, kv_cache=kv_cache, block_ids=block_ids, staging=staging)


def _launch(kv_cache: torch.Tensor, block_ids: torch.Tensor, staging: torch.Tensor,
            gather: bool) -> None:
    _, num_layers, _, num_kv_heads, block_size, head_dim = kv_cache.shape
    if block_ids.shape[0] == 0:
        return
    grid = (block_ids.shape[0], num_layers * 2, num_kv_heads)
    s_block, s_layer, s_kv, s_head, s_tok = kv_cache.stride()[:5]
    _copy_blocks_kernel[grid](
        kv_cache, staging, block_ids, num_kv_heads, s_layer, s_kv, s_block, s_tok, s_head,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_T=triton.next_power_of_2(block_size),
        BLOCK_D=triton.next_power_of_2(head_dim), GATHER=gather)


def gather_blocks(kv_cache: torch.Tensor, block_ids: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """Copy blocks `block_ids` (int64 `[n]`) of the pool into `out` `[n, L, 2, Hkv, bs, D]`.

    Raises:
        ValueError: on a shape, dtype, device or stride the kernel does not handle.
    """
    _check("gather_blocks", kv_cache, block_ids, out)
    _launch(kv_cache, block_ids, out, gather=True)
    return out


def scatter_blocks(staging: torch.Tensor, block_ids: torch.Tensor,
                   kv_cache: torch.Tensor) -> torch.Tensor:
    """Copy `staging` `[n, L, 2, Hkv, bs, D]` into blocks `block_ids` of the pool; returns kv_cache.

    Raises:
        ValueError: on a shape, dtype, device or stride the kernel does not handle.
    """
    _check("scatter_blocks", kv_cache, block_ids, staging)
    _launch(kv_cache, block_ids, staging, gather=False)
    return kv_cache
