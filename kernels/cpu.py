"""Fast pure-torch twins for the CPU path: the launchers' signatures, each checked against
`reference.py` (its oracle) in tests/kernels/test_cpu.py.

Where the references favour clarity (boolean-mask scatters, einsum over a block gather), these
favour few, large ops: one `index_copy_` per cache, one token gather per cache and one
`scaled_dot_product_attention` for the whole decode batch, one per sequence for prefill. This
module never imports triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kvtier.kernels import reference

LINEAR_PACK_ROWS = 8  # NOTE: oneDNN's row-count hint for the layout; measured at least as fast as 1 from 1 to 2048 rows
_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa from torch 2.5


def _token_rows(cache: torch.Tensor) -> torch.Tensor | None:
    """`[num_blocks * block_size, num_kv_heads, head_dim]`, a view of `cache`; None if no view exists."""
    try:
        return cache.view(-1, *cache.shape[2:])
    except RuntimeError:
        return None


def store_kv_cpu(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """As `store_kv_ref`: K/V `[num_tokens, num_kv_heads, head_dim]` into their slots; -1 is skipped."""
    k_rows, v_rows = _token_rows(k_cache), _token_rows(v_cache)
    has_pad = slot_mapping.numel() > 0 and int(slot_mapping.min()) < 0
    if k_rows is None or v_rows is None or has_pad:
        reference.store_kv_ref(key, value, k_cache, v_cache, slot_mapping)
        return
    slots = slot_mapping.long()
    k_rows.index_copy_(0, slots, key.to(k_cache.dtype))
    v_rows.index_copy_(0, slots, value.to(v_cache.dtype))


def _decode_slots(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                  max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's token slots `int64 [batch, max_len]` and which of them are inside it.

    NOTE: a position past a sequence's end reads the sequence's first token, which it owns and
    holds a finite value, so a masked weight of exactly 0 never meets a NaN of an unowned slot.
    """
    positions = torch.arange(max_len, device=seq_lens.device)
    inside = positions[None, :] < seq_lens.long()[:, None]  # [batch, max_len]
    positions = torch.where(inside, positions[None, :], 0)
    block_ids = block_tables.long().gather(1, positions // block_size)  # [batch, max_len]
    if bool(((block_ids < 0) & inside).any()):
        raise ValueError(f"block table has PAD_SLOT_ID within seq_lens {seq_lens.tolist()}: {block_tables.tolist()}")
    return block_ids.clamp(min=0) * block_size + positions % block_size, inside


def paged_decode_attention_cpu(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """As `paged_decode_attention_ref`: query/out `[batch, num_heads, head_dim]`, float32 math.

    The batch's tokens are gathered once per cache into `[batch, max_len, num_kv_heads, head_dim]`
    and attended by one SDPA call with a padding mask, query heads grouped with their KV head.
    """
    batch, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    k_rows, v_rows = _token_rows(k_cache), _token_rows(v_cache)
    max_len = int(seq_lens.max()) if batch else 0
    if max_len == 0 or k_rows is None or v_rows is None:
        return reference.paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, scale)
    if max_len > block_tables.shape[1] * block_size:
        raise ValueError(f"seq_lens {seq_lens.tolist()} exceed the {block_tables.shape[1]} blocks of the table")
    slots, inside = _decode_slots(block_tables, seq_lens, block_size, max_len)
    shape = (batch, max_len, num_kv_heads, head_dim)
    k = k_rows.index_select(0, slots.flatten()).view(shape).transpose(1, 2).float()  # [batch, Hkv, L, D]
    v = v_rows.index_select(0, slots.flatten()).view(shape).transpose(1, 2).float()
    q = query.float().view(batch, num_heads, 1, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=inside[:, None, None, :], scale=scale,
                                         enable_gqa=num_heads != num_kv_heads)  # [batch, H, 1, D]
    out = torch.where((seq_lens > 0)[:, None, None, None], out, 0.0)  # a sequence of length 0: zeros
    return out.view(batch, num_heads, head_dim).to(query.dtype)


def paged_prefill_attention_cpu(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                                 seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal varlen attention of new tokens [total_new_tokens, num_heads, head_dim] over the cache:
    each sequence's new tokens are the last ones of its `seq_len`, and attend to every key up to
    their own position.

    One fused SDPA call per sequence reads K/V once per KV head (`enable_gqa`) and never holds the
    [heads, new, seq_len] score matrix the reference builds in float32: a 4k-token SmolLM2-135M
    prefill 80 -> 41 s (both under load), about half of it that matrix.
    """
    out = torch.empty_like(query)
    group = query.shape[1] // k_cache.shape[2]
    for b, q_start, q_end, seq_len in reference.prefill_spans(query_start_loc, seq_lens):
        q_len = q_end - q_start
        k = reference._gather_seq(k_cache, block_tables[b], seq_len).to(query.dtype).transpose(0, 1)  # [Hkv, L, D]
        v = reference._gather_seq(v_cache, block_tables[b], seq_len).to(query.dtype).transpose(0, 1)
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


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight [out, in]` reordered once into oneDNN's blocked layout, for `linear_packed_cpu`;
    None where oneDNN is absent or takes neither the dtype nor the shape.

    Why: MKL's sgemm, which torch.nn.functional.linear calls on CPU, reached 5-9 GB/s of weight
    reads for 1-8 rows on this project's AMD CPUs (32 GB/s to sum a tensor); oneDNN on the blocked
    copy 13-23 GB/s, and 1.2-2x the FLOP/s up to 2048 rows. The copy is as large as the weight.
    """
    if not torch.backends.mkldnn.is_available() or weight.dim() != 2 or weight.dtype not in (torch.float32,
                                                                                           torch.bfloat16):
        return None
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), LINEAR_PACK_ROWS)
    return packed


def linear_packed_cpu(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """As torch.nn.functional.linear(x, weight, bias), `packed` being `pack_linear_weight(weight)`."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out
