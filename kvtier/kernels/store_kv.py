"""store_kv: scatter new tokens' K and V into their cache slots (slot PAD_SLOT_ID is skipped).

One program per token copies the token's `[num_kv_heads, head_dim]` K and V into its slot: one
`head_dim` row per KV head, since the cache is head-major within a block. The cache may be a
strided view (e.g. `kv_cache[layer, 0]` of the device pool) as long as `head_dim` is dense.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import (
    check_inner_contiguous,
    check_int_vector,
    check_ndim,
    check_paged_cache,
    check_same_device,
    check_shape,
)


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                     stride_key_tok, stride_key_head, stride_value_tok, stride_value_head,
                     stride_kc_block, stride_kc_head, stride_kc_tok,
                     stride_vc_block, stride_vc_head, stride_vc_tok,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.static_assert(BLOCK_H >= NUM_KV_HEADS and BLOCK_D >= HEAD_DIM)
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    if slot >= 0:  # PAD_SLOT_ID (-1) marks a token that has no slot
        block_id = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        heads = tl.arange(0, BLOCK_H)
        cols = tl.arange(0, BLOCK_D)
        mask = (heads[:, None] < NUM_KV_HEADS) & (cols[None, :] < HEAD_DIM)
        k = tl.load(key_ptr + token * stride_key_tok + heads[:, None] * stride_key_head + cols[None, :], mask=mask)
        v = tl.load(value_ptr + token * stride_value_tok + heads[:, None] * stride_value_head + cols[None, :],
                    mask=mask)
        k_dst = k_cache_ptr + block_id * stride_kc_block + offset * stride_kc_tok + heads[:, None] * stride_kc_head
        v_dst = v_cache_ptr + block_id * stride_vc_block + offset * stride_vc_tok + heads[:, None] * stride_vc_head
        tl.store(k_dst + cols[None, :], k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_dst + cols[None, :], v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _check(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           slot_mapping: torch.Tensor) -> None:
    op = "store_kv"
    _, num_kv_heads, _, head_dim = check_paged_cache(op, k_cache, v_cache)
    check_ndim(op, "key", key, 3, "[num_tokens, num_kv_heads, head_dim]")
    check_shape(op, "key", key, (key.shape[0], num_kv_heads, head_dim))
    check_shape(op, "value", value, tuple(key.shape))
    check_int_vector(op, "slot_mapping", slot_mapping, torch.int64, key.shape[0])
    check_same_device(op, key=key, value=value, k_cache=k_cache, v_cache=v_cache,
                      slot_mapping=slot_mapping)
    if key.dtype != k_cache.dtype or value.dtype != k_cache.dtype:
        raise ValueError(f"store_kv: key/value dtype must match the cache ({k_cache.dtype}), "
                         f"got {key.dtype}/{value.dtype}")
    for name, t in (("key", key), ("value", value), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_inner_contiguous(op, name, t, 1)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value `[num_tokens, num_kv_heads, head_dim]` into the paged caches.

    Args:
        key, value: new tokens' K and V, same dtype as the caches.
        k_cache, v_cache: `[num_blocks, num_kv_heads, block_size, head_dim]`.
        slot_mapping: int64 `[num_tokens]`, slot = block_id * block_size + offset; -1 skips.

    Raises:
        ValueError: on a shape, dtype, device or stride the kernel does not handle.
    """
    _check(key, value, k_cache, v_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[2],
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim))
