"""Triton helpers shared by the paged attention kernels: paged K/V tile loads and a safe dot.

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

