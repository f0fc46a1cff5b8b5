"""store_kv writes exactly the mapped slots of a strided per-layer cache view, and skips -1."""
from __future__ import annotations

from itertools import product

import pytest
import torch

from kvtier.kernels.reference import store_kv_ref
from kvtier.kernels.store_kv import store_kv
from kvtier.types import PAD_SLOT_ID
from tests.kernels.paged_inputs import DEVICES, DTYPES, HEAD_DIMS, randn

CASES = [pytest.param(dt, hd, bs, kv, id=f"{str(dt)[6:]}-d{hd}-bs{bs}-kv{kv}",
                      marks=[] if (bs == 16 and kv == 2) or hd == 128 else [pytest.mark.slow])
         for dt, hd, bs, kv in product(DTYPES, HEAD_DIMS, (16, 32), (1, 2, 8))]


def _slots(num_tokens: int, num_slots: int, seed: int) -> torch.Tensor:
    """Distinct random slots, every third token padded."""
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    slots[::3] = PAD_SLOT_ID
    return slots


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,head_dim,block_size,num_kv_heads", CASES)
def test_store_kv_writes_mapped_slots_of_layer_view(dtype, head_dim, block_size, num_kv_heads,
                                                    device):
    num_blocks, num_tokens = 5, block_size + 1  # irregular: one block and one token
    pool = torch.full((num_blocks, 2, 2, num_kv_heads, block_size, head_dim), float("nan"),
                      dtype=dtype, device=device)  # [blocks, layers, K|V, heads, block_size, dim], as DevicePool
    expected = pool.clone()
    key = randn((num_tokens, num_kv_heads, head_dim), dtype, device, seed=1)
    value = randn((num_tokens, num_kv_heads, head_dim), dtype, device, seed=2)
    slots = _slots(num_tokens, num_blocks * block_size, seed=3).to(device)
    store_kv(key, value, pool[:, 1, 0], pool[:, 1, 1], slots)
    store_kv_ref(key, value, expected[:, 1, 0], expected[:, 1, 1], slots)
    torch.testing.assert_close(pool, expected, rtol=0, atol=0, equal_nan=True)
    written = torch.isfinite(pool[:, 1]).transpose(2, 3).flatten(0, 2).all(-1).all(-1).sum().item()
    assert written == 2 * int((slots != PAD_SLOT_ID).sum())
    assert not torch.isfinite(pool[:, 0]).any()  # layer 0 untouched
    token = int((slots != PAD_SLOT_ID).nonzero()[0])  # the layout itself: slot s is block s // bs, offset s % bs
    block, offset = divmod(int(slots[token]), block_size)
    assert torch.equal(pool[block, 1, 1, :, offset], value[token])


@pytest.mark.parametrize("device", DEVICES)
def test_store_kv_with_no_tokens_is_a_no_op(device):
    cache = torch.zeros(2, 1, 16, 64, device=device)
    empty = torch.zeros(0, 1, 64, device=device)
    store_kv(empty, empty, cache, cache.clone(), torch.zeros(0, dtype=torch.int64, device=device))
    assert not cache.any()


def test_store_kv_rejects_int32_slot_mapping():
    cache = torch.zeros(2, 1, 16, 64)
    key = torch.zeros(3, 1, 64)
    with pytest.raises(ValueError, match=r"slot_mapping.dtype must be one of \(torch.int64,\), got torch.int32"):
        store_kv(key, key, cache, cache.clone(), torch.zeros(3, dtype=torch.int32))


def test_store_kv_rejects_head_mismatch():
    cache = torch.zeros(2, 2, 16, 64)
    key = torch.zeros(3, 1, 64)
    with pytest.raises(ValueError, match=r"key must have shape \(3, 2, 64\), got \(3, 1, 64\)"):
        store_kv(key, key, cache, cache.clone(), torch.zeros(3, dtype=torch.int64))
