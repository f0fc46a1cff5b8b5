"""Paged prefill attention through torch's `scaled_dot_product_attention`: the CPU fast path.

The reference (`reference.paged_prefill_attention_ref`) materialises every [heads, new, seq_len]
score matrix in float32 with K/V repeated per query head; for a 4k-token SmolLM2-135M prompt
that is over half of the prefill. SDPA's fused CPU kernel reads K/V once per KV head
(`enable_gqa`) and never holds the whole matrix. Same signature as the reference, its twin.
This module never imports triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kvtier.kernels.reference import _gather_seq

_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa from torch 2.5


def paged_prefill_attention_sdpa(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                                 seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal varlen attention of new tokens [total_new_tokens, num_heads, head_dim] over the cache:
    each sequence's new tokens are the last ones of its `seq_len`, and attend to every key up to
    their own position."""
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    group = query.shape[1] // k_cache.shape[2]
    for b, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[b], starts[b + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        if q_len > seq_len:
            raise ValueError(f"sequence {b} has {q_len} new tokens but seq_len {seq_len}")
        k = _gather_seq(k_cache, block_tables[b], seq_len).to(query.dtype).transpose(0, 1)  # [Hkv, L, D]
        v = _gather_seq(v_cache, block_tables[b], seq_len).to(query.dtype).transpose(0, 1)
        if not _HAS_GQA and group > 1:
            k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        q = query[q_start:q_end].transpose(0, 1)  # [H, n, D]
        mask = None
        if q_len < seq_len:  # NOTE: new token i sits at position seq_len - q_len + i
            keys = torch.arange(seq_len, device=query.device)
            mask = keys[None, :] <= torch.arange(seq_len - q_len, seq_len, device=query.device)[:, None]
        extra = {"enable_gqa": True} if _HAS_GQA and group > 1 else {}
        attended = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, is_causal=mask is None,
                                                  scale=scale, **extra)
        out[q_start:q_end] = attended[0].transpose(0, 1)
    return out
