"""Paged prefill attention: causal varlen attention of chunks of new tokens over the paged cache.

The new tokens' K/V are already in the cache after the sequence's earlier tokens (a prefix hit or
an earlier chunk). One program per (query tile, query head) runs online softmax over keys
0 .. its last query position. Tiles are numbered without a host sync: sequence b's tiles start
at `query_start_loc[b] // BLOCK_M + b`, which leaves room for its cdiv(q_len, BLOCK_M) tiles, and
a program finds its sequence by binary search over query_start_loc.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._attention_args import block_tok_head_strides, check_attention_args, tile_config
from ._checks import check_int_vector
from ._tiles import dot, load_paged_tile, online_softmax_step

LOG2E = 1.4426950408889634  # 1/ln 2: softmax runs in base 2 so it can use exp2


@triton.jit
def _find_seq(query_start_loc_ptr, tile, batch, BLOCK_M: tl.constexpr):
    """The last sequence b whose first tile `query_start_loc[b] // BLOCK_M + b` is <= tile."""
    lo = 0
    hi = batch
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_M + mid
        if first_tile <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_prefill_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
        out_ptr, qk_scale, batch,
        stride_q_tok, stride_q_h, stride_kc_block, stride_kc_tok, stride_kc_head,
        stride_vc_block, stride_vc_tok, stride_vc_head, stride_bt_b, stride_o_tok, stride_o_h,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(BLOCK_D >= HEAD_DIM and BLOCK_M >= 16 and BLOCK_N >= 16)
    tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, tile, batch, BLOCK_M)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    m_start = (tile - (q_start // BLOCK_M + seq)) * BLOCK_M
    if m_start < q_len:  # spare tiles of the numbering have no rows
        seq_len = tl.load(seq_lens_ptr + seq)
        offs_m = m_start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < q_len
        q_pos = seq_len - q_len + offs_m  # position of each new token in its sequence
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * stride_q_tok + head * stride_q_h + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        kv_head = head // GROUP
        table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt_b
        kv_end = tl.minimum(seq_len, seq_len - q_len + m_start + BLOCK_M)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for tile_start in range(0, kv_end, BLOCK_N):
            pos = tile_start + tl.arange(0, BLOCK_N)
            mask_n = pos < kv_end
            k = load_paged_tile(k_cache_ptr, table_row, pos, mask_n, kv_head, offs_d, mask_d,
                                stride_kc_block, stride_kc_tok, stride_kc_head, BLOCK_SIZE)
            qk = dot(q, tl.trans(k), UPCAST, DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
            # Key 0 is always visible, so no row is all -inf (padding rows included).
            visible = mask_n[None, :] & (pos[None, :] <= q_pos[:, None])
            qk = tl.where(visible, qk, float("-inf"))
            v = load_paged_tile(v_cache_ptr, table_row, pos, mask_n, kv_head, offs_d, mask_d,
                                stride_vc_block, stride_vc_tok, stride_vc_head, BLOCK_SIZE)
            acc, m_i, l_i = online_softmax_step(qk, v, m_i, l_i, acc, UPCAST, DOT_PRECISION)
        out = acc / l_i[:, None]
        tl.store(out_ptr + rows[:, None] * stride_o_tok + head * stride_o_h + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _check(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor, query_start_loc: torch.Tensor,
           seq_lens: torch.Tensor) -> None:
    op = "paged_prefill_attention"
    check_attention_args(op, query, k_cache, v_cache, block_tables, seq_lens)
    check_int_vector(op, "query_start_loc", query_start_loc, torch.int32, block_tables.shape[0] + 1)
    if query_start_loc.device != query.device:
        raise ValueError(f"{op}: query_start_loc is on {query_start_loc.device}, query on {query.device}")


def paged_prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of a varlen batch of new tokens over the paged cache.

    Args:
        query: `[total_new_tokens, num_heads, head_dim]`, sequences back to back.
        k_cache, v_cache: `[num_blocks, num_kv_heads, block_size, head_dim]`, holding the new
            tokens' K/V after each sequence's earlier tokens.
        block_tables: int32 `[batch, max_blocks_per_seq]`, padded with -1.
        query_start_loc: int32 `[batch + 1]`, cumulative new-token counts starting at 0.
        seq_lens: int32 `[batch]`, all tokens of each sequence including the new ones.
        scale: multiplier of q.k, usually head_dim ** -0.5.

    Returns:
        out `[total_new_tokens, num_heads, head_dim]` in query's dtype.

    Raises:
        ValueError: on a shape, dtype, device or stride the kernel does not handle.
    """
    _check(query, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    total, num_heads, head_dim = query.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    batch = block_tables.shape[0]
    out = torch.empty_like(query)
    if total == 0 or batch == 0:
        return out
    cfg = tile_config(head_dim, query.dtype, query.device)
    _paged_prefill_kernel[(total // cfg.block_m + batch, num_heads)](
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, scale * LOG2E,
        batch, query.stride(0), query.stride(1), *block_tok_head_strides(k_cache), *block_tok_head_strides(v_cache),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
        UPCAST=cfg.upcast, DOT_PRECISION=cfg.dot_precision)
    return out
