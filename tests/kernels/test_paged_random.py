"""Seeded random batches (lengths, chunking, GQA, block size, head_dim) through both attention kernels."""
from __future__ import annotations

import random

import pytest
import torch

from kvtier.kernels.paged_attention import paged_decode_attention
from kvtier.kernels.paged_prefill import paged_prefill_attention
from kvtier.kernels.reference import (
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
)
from tests.kernels.paged_inputs import DEVICES, HEAD_DIMS, make_paged_cache, randn
from tests.tolerances import tol

SEEDS = [pytest.param(s, marks=[] if s < 4 else [pytest.mark.slow]) for s in range(12)]


def _config(seed: int) -> dict:
    rng = random.Random(seed)
    num_kv_heads = rng.choice([1, 2, 3])
    batch = rng.randint(1, 4)
    seq_lens = [rng.randint(1, 90) for _ in range(batch)]
    return {"block_size": rng.choice([16, 32]), "head_dim": rng.choice(HEAD_DIMS),
            "num_kv_heads": num_kv_heads, "num_heads": num_kv_heads * rng.choice([1, 2, 5]),
            "dtype": rng.choice([torch.float16, torch.bfloat16, torch.float32]),
            "seq_lens": seq_lens, "new_tokens": [rng.randint(0, n) for n in seq_lens]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_batch_decode_and_prefill_match_reference(seed, device, poisoned_alloc):
    cfg = _config(seed)
    dtype, head_dim = cfg["dtype"], cfg["head_dim"]
    paged = make_paged_cache(cfg["seq_lens"], cfg["block_size"], cfg["num_kv_heads"], head_dim,
                             dtype, device, seed=seed)
    cache = (paged.k_cache, paged.v_cache, paged.block_tables)
    query = randn((len(cfg["seq_lens"]), cfg["num_heads"], head_dim), dtype, device, seed)
    args = (query, *cache, paged.seq_lens, head_dim ** -0.5)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_ref(*args),
                               **tol(dtype), msg=lambda m: f"decode {cfg}: {m}")
    starts = torch.tensor([0, *cfg["new_tokens"]]).cumsum(0).to(torch.int32).to(device)
    query = randn((int(starts[-1]), cfg["num_heads"], head_dim), dtype, device, seed + 1)
    args = (query, *cache, starts, paged.seq_lens, head_dim ** -0.5)
    torch.testing.assert_close(paged_prefill_attention(*args), paged_prefill_attention_ref(*args),
                               **tol(dtype), msg=lambda m: f"prefill {cfg}: {m}")
