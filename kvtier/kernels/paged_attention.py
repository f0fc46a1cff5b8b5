"""Paged decode attention, split-KV (flash-decoding): one new query token per sequence.

Stage 1: one program per (sequence, KV head, split) runs online softmax over its chunk of the
context for all query heads of the KV head's group, writing a normalized partial output and its
log-sum-exp. Stage 2: one program per (sequence, query head) merges the splits by log-sum-exp.
Splitting lets long contexts at small batch still fill the GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._attention_args import (
    DecodeTuning,
    block_tok_head_strides,
    check_decode_args,
    choose_num_splits,
    tile_config,
)
from ._tiles import dot, load_paged_tile, online_softmax_step

LOG2E = 1.4426950408889634  # 1/ln 2: softmax runs in base 2 so it can use exp2


@triton.jit
def _paged_decode_split_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, part_out_ptr,
        part_lse_ptr, qk_scale, split_len,
        stride_q_b, stride_q_h, stride_kc_block, stride_kc_tok, stride_kc_head,
        stride_vc_block, stride_vc_tok, stride_vc_head, stride_bt_b,
        stride_po_b, stride_po_h, stride_po_s, stride_pl_b, stride_pl_h,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(BLOCK_H >= GROUP and BLOCK_D >= HEAD_DIM)
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    if start < end:  # splits past the end of a short sequence have nothing to do
        offs_h = tl.arange(0, BLOCK_H)
        mask_h = offs_h < GROUP
        heads = kv_head * GROUP + offs_h
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        q = tl.load(q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + offs_d[None, :],
                    mask=mask_h[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_H, BLOCK_D]
        table_row = block_tables_ptr + seq * stride_bt_b
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for tile_start in range(start, end, BLOCK_N):
            pos = tile_start + tl.arange(0, BLOCK_N)
            mask_n = pos < end
            k = load_paged_tile(k_cache_ptr, table_row, pos, mask_n, kv_head, offs_d, mask_d,
                                stride_kc_block, stride_kc_tok, stride_kc_head, BLOCK_SIZE)
            qk = dot(q, tl.trans(k), UPCAST, DOT_PRECISION) * qk_scale  # [BLOCK_H, BLOCK_N]
            qk = tl.where(mask_n[None, :], qk, float("-inf"))
            v = load_paged_tile(v_cache_ptr, table_row, pos, mask_n, kv_head, offs_d, mask_d,
                                stride_vc_block, stride_vc_tok, stride_vc_head, BLOCK_SIZE)
            acc, m_i, l_i = online_softmax_step(qk, v, m_i, l_i, acc, UPCAST, DOT_PRECISION)
        out = acc / l_i[:, None]
        lse = m_i + tl.log2(l_i)  # base-2 log-sum-exp of this split's scaled scores
        po = part_out_ptr + seq * stride_po_b + heads[:, None] * stride_po_h + split * stride_po_s
        tl.store(po + offs_d[None, :], out, mask=mask_h[:, None] & mask_d[None, :])
        tl.store(part_lse_ptr + seq * stride_pl_b + heads * stride_pl_h + split, lse, mask=mask_h)


@triton.jit
def _paged_decode_reduce_kernel(
        part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr, split_len,
        stride_po_b, stride_po_h, stride_po_s, stride_pl_b, stride_pl_h, stride_o_b, stride_o_h,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    num_active = tl.cdiv(tl.load(seq_lens_ptr + seq), split_len)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    m = float("-inf")
    denom = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for split in range(num_active):
        lse = tl.load(part_lse_ptr + seq * stride_pl_b + head * stride_pl_h + split)
        part = tl.load(part_out_ptr + seq * stride_po_b + head * stride_po_h
                       + split * stride_po_s + offs_d, mask=mask_d, other=0.0)
        m_new = tl.maximum(m, lse)
        alpha = tl.exp2(m - m_new)
        weight = tl.exp2(lse - m_new)
        acc = acc * alpha + weight * part
        denom = denom * alpha + weight
        m = m_new
    denom = tl.where(denom > 0.0, denom, 1.0)  # seq_len 0: no splits, the output is zeros
    tl.store(out_ptr + seq * stride_o_b + head * stride_o_h + offs_d,
             (acc / denom).to(out_ptr.dtype.element_ty), mask=mask_d)


def paged_decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float, *, tuning: DecodeTuning | None = None) -> torch.Tensor:
    """Attention of one new token per sequence over its paged context.

    Args:
        query: `[batch, num_heads, head_dim]`; num_heads a multiple of num_kv_heads (GQA/MQA).
        k_cache, v_cache: `[num_blocks, num_kv_heads, block_size, head_dim]`, query's dtype.
        block_tables: int32 `[batch, max_blocks_per_seq]`, padded with -1.
        seq_lens: int32 `[batch]`, tokens in the cache including the new one (0 gives zeros).
        scale: multiplier of q.k, usually head_dim ** -0.5.
        tuning: launch knobs (tile length, warps, pipeline stages, programs per SM) for
            benchmarks; None uses the defaults. Off CUDA, programs_per_sm is ignored.

    Returns:
        out `[batch, num_heads, head_dim]` in query's dtype.

    Raises:
        ValueError: on a shape, dtype, device or stride the kernel does not handle.
    """
    check_decode_args(query, k_cache, v_cache, block_tables, seq_lens)
    batch, num_heads, head_dim = query.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    out = torch.empty_like(query)
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    tuning = tuning or DecodeTuning()
    cfg = tile_config(head_dim, query.dtype, query.device)
    block_n = tuning.block_n or cfg.block_n
    max_tiles = triton.cdiv(block_tables.shape[1] * block_size, block_n)
    num_splits = choose_num_splits(batch * num_kv_heads, max_tiles, query.device,
                                   tuning.programs_per_sm)
    # A whole number of tiles, never 0 (the reduction divides by it, even for an empty table).
    split_len = max(1, triton.cdiv(max_tiles, num_splits)) * block_n
    # [batch, num_heads, num_splits, head_dim] and [batch, num_heads, num_splits], float32
    part_out = torch.empty(batch, num_heads, num_splits, head_dim, device=query.device,
                           dtype=torch.float32)
    part_lse = torch.empty(batch, num_heads, num_splits, device=query.device, dtype=torch.float32)
    _paged_decode_split_kernel[(batch, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse,
        scale * LOG2E, split_len, query.stride(0), query.stride(1),
        *block_tok_head_strides(k_cache), *block_tok_head_strides(v_cache), block_tables.stride(0),
        *part_out.stride()[:3], *part_lse.stride()[:2],
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=cfg.block_d,
        UPCAST=cfg.upcast, DOT_PRECISION=cfg.dot_precision, num_warps=tuning.num_warps,
        num_stages=tuning.num_stages)
    _paged_decode_reduce_kernel[(batch, num_heads)](
        part_out, part_lse, seq_lens, out, split_len, *part_out.stride()[:3],
        *part_lse.stride()[:2], out.stride(0), out.stride(1), HEAD_DIM=head_dim,
        BLOCK_D=cfg.block_d)
    return out
