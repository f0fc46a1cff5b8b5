"""Triton helpers shared by the paged attention kernels: paged K/V tile loads, a safe dot, and
the running-softmax step of flash attention.

NOTE: triton 3.9's interpreter (TRITON_INTERPRET=1) keeps bfloat16 values as numpy uint16 (numpy
has no bfloat16), so any arithmetic on bf16 values there (+, tl.sum, tl.dot) works on the bit
patterns and returns garbage; loads, stores, `other=`, tl.full and casts are exact. The kernels
therefore never compute on 16-bit values except inside tl.dot, and launchers set UPCAST=True
off CUDA so tl.dot gets float32 operands. On the GPU the dot runs on the native fp16/bf16
tensor cores with float32 accumulation.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_paged_tile(cache_ptr, block_table_row_ptr, token_pos, token_mask, kv_head, offs_d,
                    mask_d, stride_c_block, stride_c_tok, stride_c_head,
                    BLOCK_SIZE: tl.constexpr):
    """Rows token_pos of one sequence's cache for one KV head: [len(token_pos), len(offs_d)]."""
    block_ids = tl.load(block_table_row_ptr + token_pos // BLOCK_SIZE, mask=token_mask, other=0)
    rows = (block_ids.to(tl.int64) * stride_c_block + (token_pos % BLOCK_SIZE) * stride_c_tok
            + kv_head * stride_c_head)
    return tl.load(cache_ptr + rows[:, None] + offs_d[None, :],
                   mask=token_mask[:, None] & mask_d[None, :], other=0.0)


@triton.jit
def dot(a, b, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a @ b with float32 accumulation; see the module NOTE for UPCAST."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)



@triton.jit
def online_softmax_step(qk, v, m_i, l_i, acc, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold one tile into flash attention's running softmax; returns the new (acc, m_i, l_i).

    qk: [ROWS, BLOCK_N] masked base-2 scores; v: [BLOCK_N, HEAD_DIM]; m_i, l_i: [ROWS] running
    max and sum of exp2; acc: [ROWS, HEAD_DIM] float32.
    """
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, UPCAST, DOT_PRECISION)
    return acc, m_new, l_i
