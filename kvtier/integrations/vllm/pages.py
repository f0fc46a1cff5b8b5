"""Copies between vLLM's KV pages and kvtier blocks, with a twin that checks them element by element.

vLLM hands the offloading worker one int8 tensor `[num_blocks, page_bytes]` per layer. On its CPU
attention backend (layout LBHNC) a page is `[H, 2 (K, V), N, D]`: each head's K rows then its V
rows. A kvtier block is `[L, 2, H, N, D]` (KVLayout), so each layer's page is permuted on the way.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from kvtier.config import KVLayout


def page_view(page: torch.Tensor, layout: KVLayout) -> torch.Tensor:
    """One layer's page of one block, as `[2, H, N, D]` of the layout's dtype (a strided view)."""
    n = layout.layer_page_size_bytes
    shaped = page[:n].view(layout.dtype).view(layout.num_kv_heads, 2, layout.block_size, layout.head_dim)
    return shaped.permute(1, 0, 2, 3)


def pages_to_block(pages: Sequence[torch.Tensor], block_id: int, out: torch.Tensor, layout: KVLayout) -> None:
    """Copy block `block_id` of every layer's page tensor into `out` (`layout.block_shape`)."""
    for layer, tensor in enumerate(pages):
        out[layer].copy_(page_view(tensor[block_id], layout))


def block_to_pages(block: torch.Tensor, pages: Sequence[torch.Tensor], block_id: int, layout: KVLayout) -> None:
    """Copy one kvtier block into block `block_id` of every layer's page tensor."""
    for layer, tensor in enumerate(pages):
        page_view(tensor[block_id], layout).copy_(block[layer])


def pages_to_block_reference(pages: Sequence[torch.Tensor], block_id: int, out: torch.Tensor,
                             layout: KVLayout) -> None:
    """Twin of pages_to_block, indexing each element as the CPU backend's kernel addresses it."""
    h_, n_, d_ = layout.num_kv_heads, layout.block_size, layout.head_dim
    for layer, tensor in enumerate(pages):
        flat = tensor[block_id].view(layout.dtype)
        for h in range(h_):
            for kv in range(2):
                for n in range(n_):
                    start = ((h * 2 + kv) * n_ + n) * d_
                    out[layer, kv, h, n] = flat[start:start + d_]
