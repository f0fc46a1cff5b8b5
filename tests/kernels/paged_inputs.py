"""Builders for kernel test inputs: paged caches with shuffled block tables and poisoned slack.

Every cache slot that no sequence owns holds NaN, so a kernel that reads past a sequence's end
or through a padded table entry produces NaN and fails the comparison.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from kvtier.types import PAD_SLOT_ID

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

# CPU tensors run the Triton code through the interpreter; CUDA ones run it for real.
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETING, reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")]),
]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HEAD_DIMS = [64, 80, 96, 128, 256]


def irregular_lens(block_size: int) -> list[int]:
    """1, block_size - 1, block_size, block_size + 1 and a prime spanning several blocks."""
    return [1, block_size - 1, block_size, block_size + 1, 67]


def case_param(case: tuple, slow: bool) -> object:
    """pytest.param for (dtype, head_dim, block_size, (num_heads, num_kv_heads)) with a readable id."""
    dtype, head_dim, block_size, (num_heads, num_kv_heads) = case
    case_id = f"{str(dtype).removeprefix('torch.')}-d{head_dim}-bs{block_size}-h{num_heads}kv{num_kv_heads}"
    return pytest.param(*case, id=case_id, marks=[pytest.mark.slow] if slow else [])


@dataclass
class PagedCache:
    k_cache: torch.Tensor  # [num_blocks, num_kv_heads, block_size, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [batch, max_blocks_per_seq], PAD_SLOT_ID padded
    seq_lens: torch.Tensor  # int32 [batch]


def make_paged_cache(seq_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int,
                     dtype: torch.dtype, device: str, seed: int = 0) -> PagedCache:
    """Random K/V for each sequence in shuffled, non-contiguous blocks; every other slot is NaN."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = 2 * sum(blocks_per_seq) + 3  # spare blocks stay NaN
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    width = max(blocks_per_seq, default=0) + 2  # trailing PAD_SLOT_ID columns
    block_tables = torch.full((len(seq_lens), width), PAD_SLOT_ID, dtype=torch.int32)
    order = torch.randperm(num_blocks, generator=gen)
    used = 0
    for b, (seq_len, nblk) in enumerate(zip(seq_lens, blocks_per_seq)):
        block_ids = order[used:used + nblk]
        used += nblk
        block_tables[b, :nblk] = block_ids.to(torch.int32)
        for cache in (k_cache, v_cache):
            values = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen).to(dtype)
            tokens = torch.full((nblk * block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
            tokens[:seq_len] = values  # token t of the sequence: block t // block_size, offset t % block_size
            cache[block_ids] = tokens.view(nblk, block_size, num_kv_heads, head_dim).transpose(1, 2)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return PagedCache(k_cache.to(device), v_cache.to(device), block_tables.to(device), lens.to(device))


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype).to(device)

