"""Paged prefill attention (causal, varlen, over cached prefixes) against its float32 reference."""
from __future__ import annotations

from itertools import product

import pytest
import torch

from kvtier.kernels.paged_prefill import paged_prefill_attention
from kvtier.kernels.reference import paged_prefill_attention_ref
from tests.kernels.paged_inputs import (
    DEVICES,
    DTYPES,
    HEAD_DIMS,
    case_param,
    make_paged_cache,
    randn,
)
from tests.tolerances import tol

GQA = [(4, 4), (8, 2), (6, 2), (8, 1)]  # (num_heads, num_kv_heads): MHA, GQA, group 3, MQA


def _cases() -> list:
    """The full sweep; a covering subset runs by default and the rest is marked slow."""
    fast = {(dt, hd, 16, (4, 2)) for dt in DTYPES for hd in HEAD_DIMS}
    fast |= {(dt, 64, bs, g) for dt in DTYPES for bs in (16, 32) for g in GQA}
    return [case_param(case, slow=case not in fast)
            for case in product(DTYPES, HEAD_DIMS, (16, 32), GQA)]


def _check(chunks, block_size, heads, head_dim, dtype, device):
    """chunks: (num_cached_tokens, num_new_tokens) per sequence."""
    num_heads, num_kv_heads = heads
    seq_lens = [cached + new for cached, new in chunks]
    paged = make_paged_cache(seq_lens, block_size, num_kv_heads, head_dim, dtype, device, seed=3)
    starts = torch.tensor([0] + [new for _, new in chunks]).cumsum(0).to(torch.int32).to(device)
    query = randn((int(starts[-1]), num_heads, head_dim), dtype, device, seed=4)
    args = (query, paged.k_cache, paged.v_cache, paged.block_tables, starts, paged.seq_lens,
            head_dim ** -0.5)
    torch.testing.assert_close(paged_prefill_attention(*args), paged_prefill_attention_ref(*args),
                               **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,head_dim,block_size,heads", _cases())
def test_prefill_matches_reference(dtype, head_dim, block_size, heads, device, poisoned_alloc):
    bs = block_size
    # A fresh prompt, a prefix hit of one block, a chunk after a partial block, one token.
    chunks = [(0, bs - 1), (bs, bs + 1), (5, 17), (12, 1)]
    _check(chunks, block_size, heads, head_dim, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_spans_several_query_and_key_tiles(device, poisoned_alloc):
    _check([(31, 37), (0, 2), (53, 16)], 16, (4, 2), 64, torch.float32, device)


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_skips_sequences_without_new_tokens(device, poisoned_alloc):
    _check([(7, 0), (0, 3), (16, 0), (2, 5)], 16, (2, 1), 64, torch.float16, device)


def test_prefill_rejects_short_query_start_loc():
    paged = make_paged_cache([3, 4], 16, 1, 64, torch.float32, "cpu")
    query = torch.zeros(7, 1, 64)
    starts = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"query_start_loc must have shape \(3,\), got \(2,\)"):
        paged_prefill_attention(query, paged.k_cache, paged.v_cache, paged.block_tables, starts,
                                paged.seq_lens, 1.0)
