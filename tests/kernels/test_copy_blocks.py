"""gather_blocks / scatter_blocks pack pool blocks block-major (KVLayout.block_shape) and back."""
from __future__ import annotations

from itertools import product

import pytest
import torch

from kvtier.config import KVLayout
from kvtier.kernels.copy_blocks import gather_blocks, scatter_blocks
from kvtier.kernels.reference import gather_blocks_ref, scatter_blocks_ref
from tests.kernels.paged_inputs import DEVICES, DTYPES, HEAD_DIMS, randn

CASES = [pytest.param(dt, hd, bs, id=f"{str(dt)[6:]}-d{hd}-bs{bs}",
                      marks=[] if bs == 16 or hd == 80 else [pytest.mark.slow])
         for dt, hd, bs in product(DTYPES, HEAD_DIMS, (16, 32))]
NUM_LAYERS, NUM_KV_HEADS, NUM_BLOCKS = 2, 3, 7


def _pool(dtype, head_dim, block_size, device):
    # [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim]
    shape = (NUM_BLOCKS, NUM_LAYERS, 2, NUM_KV_HEADS, block_size, head_dim)
    return randn(shape, dtype, device, seed=head_dim + block_size)


def _block_ids(device):
    return torch.tensor([5, 0, 3], dtype=torch.int64, device=device)  # shuffled, non-contiguous


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,head_dim,block_size", CASES)
def test_gather_matches_reference_and_block_shape(dtype, head_dim, block_size, device):
    pool = _pool(dtype, head_dim, block_size, device)
    layout = KVLayout(num_layers=NUM_LAYERS, num_kv_heads=NUM_KV_HEADS, head_dim=head_dim,
                      block_size=block_size, dtype=dtype)
    out = torch.full((3, *layout.block_shape), float("nan"), dtype=dtype, device=device)
    gather_blocks(pool, _block_ids(device), out)
    expected = gather_blocks_ref(pool, _block_ids(device), torch.empty_like(out))
    assert torch.equal(out, expected)
    # Pin the layout itself: staging[i, layer, kv, head] is that head's [block_size, head_dim].
    assert torch.equal(out[2, 1, 0, 2], pool[3, 1, 0, 2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,head_dim,block_size", CASES)
def test_scatter_writes_only_listed_blocks(dtype, head_dim, block_size, device):
    pool = _pool(dtype, head_dim, block_size, device)
    expected = pool.clone()
    staging = randn((3, NUM_LAYERS, 2, NUM_KV_HEADS, block_size, head_dim), dtype, device, seed=9)
    scatter_blocks(staging, _block_ids(device), pool)
    scatter_blocks_ref(staging, _block_ids(device), expected)
    assert torch.equal(pool, expected)
    assert torch.equal(pool[[1, 2, 4, 6]], _pool(dtype, head_dim, block_size, device)[[1, 2, 4, 6]])


@pytest.mark.parametrize("device", DEVICES)
def test_gather_then_scatter_round_trips_into_other_blocks(device):
    pool = _pool(torch.bfloat16, 64, 16, device)
    staging = torch.empty((3, NUM_LAYERS, 2, NUM_KV_HEADS, 16, 64), dtype=torch.bfloat16, device=device)
    gather_blocks(pool, _block_ids(device), staging)
    target = torch.tensor([1, 2, 6], dtype=torch.int64, device=device)
    scatter_blocks(staging, target, pool)
    assert torch.equal(pool[[1, 2, 6]], pool[[5, 0, 3]])


def test_gather_rejects_staging_of_wrong_shape():
    pool = _pool(torch.float32, 64, 16, "cpu")
    out = torch.empty(3, NUM_LAYERS, 2, 16, NUM_KV_HEADS, 64)  # device order, not block order
    with pytest.raises(ValueError, match=r"staging must have shape \(3, 2, 2, 3, 16, 64\), got \(3, 2, 2, 16, 3, 64\)"):
        gather_blocks(pool, _block_ids("cpu"), out)


def test_scatter_rejects_non_contiguous_staging():
    pool = _pool(torch.float32, 64, 16, "cpu")
    staging = torch.empty(3, NUM_LAYERS, 2, NUM_KV_HEADS, 64, 16).transpose(-1, -2)
    with pytest.raises(ValueError, match=r"staging must be contiguous"):
        scatter_blocks(staging, _block_ids("cpu"), pool)
