"""Paged decode attention (split-KV) against its float32 reference."""
from __future__ import annotations

from itertools import product

import pytest
import torch

from kvtier.kernels._attention_args import choose_num_splits
from kvtier.kernels.paged_attention import paged_decode_attention
from kvtier.kernels.reference import paged_decode_attention_ref
from tests.kernels.paged_inputs import (
    DEVICES,
    DTYPES,
    HEAD_DIMS,
    case_param,
    irregular_lens,
    make_paged_cache,
    randn,
)
from tests.tolerances import tol

GQA = [(4, 4), (8, 2), (6, 2), (8, 1)]  # (num_heads, num_kv_heads): MHA, GQA, group 3, MQA


def _cases() -> list:
    """The full sweep; a covering subset runs by default and the rest is marked slow."""
    fast = {(dt, hd, 16, (8, 2)) for dt in DTYPES for hd in HEAD_DIMS}
    fast |= {(dt, 128, bs, g) for dt in DTYPES for bs in (16, 32) for g in GQA}
    return [case_param(case, slow=case not in fast)
            for case in product(DTYPES, HEAD_DIMS, (16, 32), GQA)]


def _check(lens, block_size, heads, head_dim, dtype, device, query=None):
    num_heads, num_kv_heads = heads
    paged = make_paged_cache(lens, block_size, num_kv_heads, head_dim, dtype, device, seed=len(lens))
    if query is None:
        query = randn((len(lens), num_heads, head_dim), dtype, device, seed=1)
    args = (query, paged.k_cache, paged.v_cache, paged.block_tables, paged.seq_lens, head_dim ** -0.5)
    out = paged_decode_attention(*args)
    torch.testing.assert_close(out, paged_decode_attention_ref(*args), **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,head_dim,block_size,heads", _cases())
def test_decode_matches_reference(dtype, head_dim, block_size, heads, device, poisoned_alloc):
    _check(irregular_lens(block_size), block_size, heads, head_dim, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_long_context_small_batch_splits_and_merges(device, poisoned_alloc):
    dev = torch.device(device)
    assert choose_num_splits(1, 13, dev) > 1, "this shape must exercise the split reduction"
    _check([199], 16, (4, 1), 64, torch.float32, device)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_reads_strided_query_rows(device, poisoned_alloc):
    qkv = randn((3, 3 * 4, 64), torch.float16, device, seed=5)  # q, k, v heads side by side
    _check([5, 33, 16], 16, (4, 2), 64, torch.float16, device, query=qkv[:, :4])


@pytest.mark.parametrize("device", DEVICES)
def test_decode_reads_layer_views_of_the_device_pool(device, poisoned_alloc):
    paged = make_paged_cache([23, 1, 40], 16, 2, 96, torch.bfloat16, device)
    # The pool is [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim]; use layer 1.
    pool = torch.full((paged.k_cache.shape[0], 3, 2, *paged.k_cache.shape[1:]), float("nan"), dtype=torch.bfloat16,
                      device=device)
    pool[:, 1, 0], pool[:, 1, 1] = paged.k_cache, paged.v_cache
    query = randn((3, 4, 96), torch.bfloat16, device, seed=6)
    args = (query, pool[:, 1, 0], pool[:, 1, 1], paged.block_tables, paged.seq_lens, 96 ** -0.5)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_ref(*args),
                               **tol(torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
def test_decode_empty_sequence_gives_zeros(device):
    paged = make_paged_cache([0, 9], 16, 2, 64, torch.float32, device)
    query = randn((2, 2, 64), torch.float32, device, seed=2)
    out = paged_decode_attention(query, paged.k_cache, paged.v_cache, paged.block_tables,
                                 paged.seq_lens, 0.125)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out[1]).all()
    no_blocks = torch.zeros(2, 0, dtype=torch.int32, device=device)
    out = paged_decode_attention(query, paged.k_cache, paged.v_cache, no_blocks,
                                 torch.zeros(2, dtype=torch.int32, device=device), 0.125)
    assert torch.equal(out, torch.zeros_like(out))


def test_decode_rejects_mismatched_heads():
    paged = make_paged_cache([3], 16, 3, 64, torch.float32, "cpu")
    query = torch.zeros(1, 4, 64)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        paged_decode_attention(query, paged.k_cache, paged.v_cache, paged.block_tables,
                               paged.seq_lens, 1.0)
