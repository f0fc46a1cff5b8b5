"""The fast torch twins of kernels/cpu.py (the CPU path of kvtier.ops) against their references."""
from __future__ import annotations

from itertools import product

import pytest
import torch

from kvtier.kernels.cpu import paged_decode_attention_cpu, store_kv_cpu
from kvtier.kernels.reference import paged_decode_attention_ref, store_kv_ref
from kvtier.types import PAD_SLOT_ID
from tests.kernels.paged_inputs import DTYPES, irregular_lens, make_paged_cache, randn
from tests.tolerances import tol

GQA = [(4, 4), (8, 2), (6, 2), (8, 1)]  # (num_heads, num_kv_heads): MHA, GQA, group 3, MQA


def _decode_args(lens, block_size, heads, head_dim, dtype, seed=0):
    num_heads, num_kv_heads = heads
    paged = make_paged_cache(lens, block_size, num_kv_heads, head_dim, dtype, "cpu", seed=seed)
    query = randn((len(lens), num_heads, head_dim), dtype, "cpu", seed=seed + 1)
    return query, paged.k_cache, paged.v_cache, paged.block_tables, paged.seq_lens, head_dim ** -0.5


@pytest.mark.parametrize("dtype,head_dim,block_size,heads", list(product(DTYPES, (64, 80), (16, 32), GQA)))
def test_decode_cpu_matches_reference_on_a_poisoned_cache(dtype, head_dim, block_size, heads):
    args = _decode_args(irregular_lens(block_size), block_size, heads, head_dim, dtype)
    torch.testing.assert_close(paged_decode_attention_cpu(*args), paged_decode_attention_ref(*args), **tol(dtype))


def test_decode_cpu_reads_layer_views_and_strided_queries():
    query, k_cache, v_cache, tables, lens, scale = _decode_args([23, 1, 40], 16, (4, 2), 96, torch.float32)
    pool = torch.full((k_cache.shape[0], 3, 2, *k_cache.shape[1:]), float("nan"))  # as DevicePool
    pool[:, 1, 0], pool[:, 1, 1] = k_cache, v_cache
    qkv = torch.cat([query, query], dim=1)  # q heads side by side with others: a strided view
    args = (qkv[:, :4], pool[:, 1, 0], pool[:, 1, 1], tables, lens, scale)
    torch.testing.assert_close(paged_decode_attention_cpu(*args), paged_decode_attention_ref(*args),
                               **tol(torch.float32))


def test_decode_cpu_gives_zeros_for_an_empty_sequence():
    query, k_cache, v_cache, tables, lens, scale = _decode_args([0, 9], 16, (2, 2), 64, torch.float32)
    out = paged_decode_attention_cpu(query, k_cache, v_cache, tables, lens, scale)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isfinite(out[1]).all()
    torch.testing.assert_close(out, paged_decode_attention_ref(query, k_cache, v_cache, tables, lens, scale))


def test_decode_cpu_rejects_a_padded_table_entry_within_a_sequence():
    query, k_cache, v_cache, tables, lens, scale = _decode_args([20], 16, (2, 2), 64, torch.float32)
    tables[0, 1] = PAD_SLOT_ID
    with pytest.raises(ValueError, match="PAD_SLOT_ID within seq_lens"):
        paged_decode_attention_cpu(query, k_cache, v_cache, tables, lens, scale)


def test_decode_cpu_rejects_mismatched_heads():
    query, k_cache, v_cache, tables, lens, _ = _decode_args([3], 16, (3, 3), 64, torch.float32)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        paged_decode_attention_cpu(torch.zeros(1, 4, 64), k_cache, v_cache, tables, lens, 1.0)


@pytest.mark.parametrize("pad_every", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_cpu_writes_what_the_reference_writes(dtype, pad_every):
    num_blocks, block_size, num_tokens = 5, 16, 17
    pool = torch.full((num_blocks, 2, 2, 2, block_size, 64), float("nan"), dtype=dtype)  # as DevicePool
    expected = pool.clone()
    key, value = randn((num_tokens, 2, 64), dtype, "cpu", seed=1), randn((num_tokens, 2, 64), dtype, "cpu", seed=2)
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(3))[:num_tokens]
    if pad_every is not None:
        slots[::pad_every] = PAD_SLOT_ID
    store_kv_cpu(key, value, pool[:, 1, 0], pool[:, 1, 1], slots)
    store_kv_ref(key, value, expected[:, 1, 0], expected[:, 1, 1], slots)
    torch.testing.assert_close(pool, expected, rtol=0, atol=0, equal_nan=True)


def test_store_kv_cpu_writes_through_a_cache_that_is_not_one_view():
    cache = torch.zeros(4, 16, 2, 64).transpose(1, 2)  # [blocks, heads, block_size, dim], not flattenable
    expected = cache.clone()
    key = randn((3, 2, 64), torch.float32, "cpu", seed=4)
    slots = torch.tensor([5, 17, 40])
    store_kv_cpu(key, key, cache, cache, slots)
    store_kv_ref(key, key, expected, expected, slots)
    assert torch.equal(cache, expected)
