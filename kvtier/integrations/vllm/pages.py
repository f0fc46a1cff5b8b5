"""Copies between vLLM's KV pages and kvtier blocks, with a twin that indexes every element.

vLLM hands the offloading worker one int8 tensor `[num_blocks, page_bytes]` per layer; what a page
holds is the attention backend's business. On the CPU backend with its portable kernels (ISA "vec",
and "vec16" for head sizes that are a multiple of 16 but not of 32) a page is, per KV head, K
transposed `[D, N]` then V `[N, D]` (found by comparing pages with transformers' K/V for the same
checkpoint: tests/integrations/vllm/test_plugin.py). A kvtier block is `[L, 2, H, N, D]`
(KVLayout), so the K of each layer is transposed on the way: objects written through vLLM are
ordinary kvtier blocks that any kvtier reader can use.

Other page formats (AMX's tiles, GPU backends) are refused at engine start until a comparison like
that one has been run for them: a wrong guess would put another model's keys in front of queries.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from kvtier.config import KVLayout

PAGE_FORMATS = ("cpu-vec", "cpu-vec16")
"""Page formats whose byte order has been checked against a reference model."""


def check_page_format(name: str) -> None:
    if name not in PAGE_FORMATS:
        raise ValueError(f"vLLM's KV pages here are in format {name!r}; kvtier's plug-in knows {list(PAGE_FORMATS)}. "
                         f"On CPU, a bfloat16 model on an AMX machine uses 'cpu-amx': run it in float32, or without "
                         f"kvtier's plug-in")


def page_views(page: torch.Tensor, layout: KVLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's page of one block as (K, V), each `[H, N, D]` of the layout's dtype (strided views)."""
    h, n, d = layout.num_kv_heads, layout.block_size, layout.head_dim
    halves = page[:layout.layer_page_size_bytes].view(layout.dtype).view(h, 2, n * d)
    return halves[:, 0].view(h, d, n).transpose(1, 2), halves[:, 1].view(h, n, d)


def pages_to_block(pages: Sequence[torch.Tensor], block_id: int, out: torch.Tensor, layout: KVLayout) -> None:
    """Copy block `block_id` of every layer's page tensor into `out` (`layout.block_shape`)."""
    for layer, tensor in enumerate(pages):
        k, v = page_views(tensor[block_id], layout)
        out[layer, 0].copy_(k)
        out[layer, 1].copy_(v)


def block_to_pages(block: torch.Tensor, pages: Sequence[torch.Tensor], block_id: int, layout: KVLayout) -> None:
    """Copy one kvtier block into block `block_id` of every layer's page tensor."""
    for layer, tensor in enumerate(pages):
        k, v = page_views(tensor[block_id], layout)
        k.copy_(block[layer, 0])
        v.copy_(block[layer, 1])


def pages_to_block_reference(pages: Sequence[torch.Tensor], block_id: int, out: torch.Tensor,
                             layout: KVLayout) -> None:
    """Twin of pages_to_block, reading each element at the offset the CPU kernels address it."""
    h_, n_, d_ = layout.num_kv_heads, layout.block_size, layout.head_dim
    for layer, tensor in enumerate(pages):
        flat = tensor[block_id].view(layout.dtype)
        for h in range(h_):
            k_base, v_base = (2 * h) * n_ * d_, (2 * h + 1) * n_ * d_
            for n in range(n_):
                out[layer, 0, h, n] = flat[k_base + n:k_base + n + d_ * n_:n_]  # column n of K^T [D, N]
                out[layer, 1, h, n] = flat[v_base + n * d_:v_base + (n + 1) * d_]
