"""Page-aligned CPU tensors: host slots that an O_DIRECT read or write moves by DMA, with no copy
through an aligned stand-in (tiers/disk/direct.py). CUDA's pinned memory is page-aligned already;
torch's CPU allocator aligns to 64 bytes only."""
from __future__ import annotations

import math

import torch

PAGE_BYTES = 4096


def page_aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor whose memory starts on a page."""
    if pin_memory:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.empty(nbytes + PAGE_BYTES, dtype=torch.uint8)
    skip = -raw.data_ptr() % PAGE_BYTES
    return raw[skip:skip + nbytes].view(dtype).view(shape)
