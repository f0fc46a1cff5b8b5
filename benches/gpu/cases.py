"""Shapes and inputs of the GPU check: paged decode cases, block-transfer cases, the SDPA baseline.

Inputs use shuffled block ids so the kernels read through real, non-contiguous block tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvtier.config import KVLayout


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeCase:
    """Paged decode at a uniform context length."""

    name: str
    batch: int
    context: int  # tokens per sequence, the new one included
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # tokens
    dtype: torch.dtype

    @property
    def bytes_moved(self) -> int:
        """K and V of every context token read once, plus query read and output written."""
        item = self.dtype.itemsize
        kv = 2 * self.batch * self.context * self.num_kv_heads * self.head_dim * item
        return kv + 2 * self.batch * self.num_heads * self.head_dim * item


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCase:
    """Moving `num_blocks` pool blocks through a device staging buffer and pinned host memory."""

    name: str
    layout: KVLayout  # sizes and block shape come from here (page_size_bytes, block_shape)
    num_blocks: int  # blocks per transfer
    pool_blocks: int  # blocks in the device pool


def check_cases(dry_run: bool) -> tuple[list[DecodeCase], list[TransferCase]]:
    """Issue 3's shapes (Llama-3-8B-like decode, 2 MiB blocks of 32 layers x 8 heads), or for a dry
    run tiny ones of the same structure, which the Triton interpreter runs on CPU in seconds."""
    if dry_run:
        (num_heads, num_kv_heads, head_dim), runs = (4, 2, 64), ((3, 37), (1, 131))
        layout = KVLayout(num_layers=2, num_kv_heads=2, head_dim=32, block_size=8, dtype=torch.bfloat16)
        num_blocks, pool_blocks = 3, 9
    else:
        (num_heads, num_kv_heads, head_dim), runs = (32, 8, 128), ((64, 4096), (4, 32768))
        layout = KVLayout(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16)
        num_blocks, pool_blocks = 128, 512
    decode = [DecodeCase(name=f"decode b{batch} ctx{context}", batch=batch, context=context,
                         num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                         block_size=16, dtype=torch.bfloat16) for batch, context in runs]
    size = layout.page_size_bytes
    label = f"{size >> 20}MiB" if size >= 1 << 20 else f"{size >> 10}KiB"
    transfer = [TransferCase(name=f"{label} blocks x{num_blocks}", layout=layout, num_blocks=num_blocks,
                             pool_blocks=pool_blocks)]
    return decode, transfer


def decode_inputs(case: DecodeCase, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(query, k_cache, v_cache, block_tables, seq_lens) with shuffled block ids."""
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = -(-case.context // case.block_size)
    num_blocks = case.batch * blocks_per_seq
    shape = (num_blocks, case.num_kv_heads, case.block_size, case.head_dim)
    k_cache = torch.randn(shape, generator=gen, device=device).to(case.dtype)
    v_cache = torch.randn(shape, generator=gen, device=device).to(case.dtype)
    order = torch.randperm(num_blocks, generator=gen, device=device)
    block_tables = order.view(case.batch, blocks_per_seq).to(torch.int32)
    seq_lens = torch.full((case.batch,), case.context, dtype=torch.int32, device=device)
    query = torch.randn(case.batch, case.num_heads, case.head_dim, generator=gen,
                        device=device).to(case.dtype)
    return query, k_cache, v_cache, block_tables, seq_lens


def torch_decode_baseline(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, context: int, scale: float) -> torch.Tensor:
    """Gather each sequence's blocks into a dense tensor, then SDPA (uniform context only)."""
    batch, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[1]
    ids = block_tables.long()
    # [batch, blocks, kv_heads, block_size, head_dim] -> [batch, kv_heads, context, head_dim]
    k = k_cache[ids].transpose(1, 2).flatten(2, 3)[:, :, :context]
    v = v_cache[ids].transpose(1, 2).flatten(2, 3)[:, :, :context]
    out = torch.nn.functional.scaled_dot_product_attention(
        query.unsqueeze(2), k, v, scale=scale, enable_gqa=num_heads != num_kv_heads)
    return out.squeeze(2)  # [batch, num_heads, head_dim]
