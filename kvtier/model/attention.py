"""Attention over kvtier's paged device pool: new K/V stored into their slots, then paged prefill
or decode attention through kvtier.ops (Triton on CUDA, the torch references elsewhere)."""
from __future__ import annotations

import torch
from torch import nn

from kvtier import ops
from kvtier.config import ModelConfig
from kvtier.model.batch import ForwardBatch
from kvtier.model.layers import Linear, apply_rotary


class PagedAttention(nn.Module):
    """q/k/v projections (biased for Qwen2), RoPE, store_kv, paged attention, output projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.scale = config.head_dim ** -0.5
        hidden, bias = config.hidden_size, config.qkv_bias
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, k_cache: torch.Tensor, v_cache: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x `[num_tokens, hidden]` -> `[num_tokens, hidden]`; this step's K/V land in the caches
        `[num_blocks, num_kv_heads, block_size, head_dim]` first. `rope` is `Rotary.cos_sin` of the
        batch's positions."""
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, k, rope)
        ops.store_kv(k.contiguous(), v.contiguous(), k_cache, v_cache, batch.slot_mapping)
        q = q.contiguous()
        if batch.is_decode:
            out = ops.paged_decode_attention(q, k_cache, v_cache, batch.block_tables, batch.seq_lens, self.scale)
        else:
            out = ops.paged_prefill_attention(q, k_cache, v_cache, batch.block_tables, batch.query_start_loc,
                                              batch.seq_lens, self.scale)
        projected: torch.Tensor = self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))
        return projected
