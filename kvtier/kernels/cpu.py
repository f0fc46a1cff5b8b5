"""Fast pure-torch twins for the CPU path: the launchers' signatures, each checked against
`reference.py` (its oracle) in tests/kernels/test_cpu.py.

Where the references favour clarity (boolean-mask scatters, einsum over a block gather), these
favour few, large ops: one `index_copy_` per cache, one row gather per cache and one
`scaled_dot_product_attention` for the whole decode batch, one per sequence for prefill. A cache
`[num_blocks, num_kv_heads, block_size, head_dim]` (a layer's view of the block-major pool, pages
apart) is addressed as rows of `head_dim`, so a gather lands K/V head-major, in the
`[..., heads, tokens, head_dim]` order SDPA takes, with no transpose.
This module never imports triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kvtier.kernels import reference

LINEAR_PACK_ROWS = 8  # NOTE: oneDNN's row-count hint for the layout; measured at least as fast as 1 from 1 to 2048 rows
_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa from torch 2.5


def _head_rows(cache: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """The `head_dim` rows from `cache`'s first page to its last, as a view, and how many rows apart
    its blocks start; None unless each page `[num_kv_heads, block_size, head_dim]` is dense."""
    num_blocks, num_kv_heads, block_size, head_dim = cache.shape
    page = num_kv_heads * block_size * head_dim
    dense = cache.stride(3) == 1 and cache.stride(2) == head_dim and cache.stride(1) == block_size * head_dim
    block_stride = cache.stride(0) if num_blocks > 1 else page
    if not dense or block_stride % head_dim or block_stride < page:
        return None
    num_rows = ((num_blocks - 1) * block_stride + page) // head_dim
    return cache.as_strided((num_rows, head_dim), (head_dim, 1)), block_stride // head_dim


def _row_index(slots: torch.Tensor, num_kv_heads: int, block_size: int, block_rows: int) -> torch.Tensor:
    """int64 `[*slots.shape[:-1], num_kv_heads, slots.shape[-1]]`: the `_head_rows` row of each head
    of each token slot (slot = block_id * block_size + offset)."""
    base = slots // block_size * block_rows + slots % block_size
    heads = torch.arange(num_kv_heads, device=slots.device) * block_size
    return base.unsqueeze(-2) + heads[:, None]


def store_kv_cpu(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """As `store_kv_ref`: K/V `[num_tokens, num_kv_heads, head_dim]` into their slots; -1 is skipped."""
    k_rows, v_rows = _head_rows(k_cache), _head_rows(v_cache)
    has_pad = slot_mapping.numel() > 0 and int(slot_mapping.min()) < 0
    if k_rows is None or v_rows is None or k_rows[1] != v_rows[1] or has_pad:
        reference.store_kv_ref(key, value, k_cache, v_cache, slot_mapping)
        return
    num_kv_heads, block_size, head_dim = k_cache.shape[1:]
    rows = _row_index(slot_mapping.long(), num_kv_heads, block_size, k_rows[1]).t().flatten()  # token-major, as key
    k_rows[0].index_copy_(0, rows, key.to(k_cache.dtype).reshape(-1, head_dim))
    v_rows[0].index_copy_(0, rows, value.to(v_cache.dtype).reshape(-1, head_dim))


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

    The batch's tokens are gathered once per cache into `[batch, num_kv_heads, max_len, head_dim]`
    and attended by one SDPA call with a padding mask, query heads grouped with their KV head.
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    k_rows, v_rows = _head_rows(k_cache), _head_rows(v_cache)
    max_len = int(seq_lens.max()) if batch else 0
    if max_len == 0 or k_rows is None or v_rows is None or k_rows[1] != v_rows[1]:
        return reference.paged_decode_attention_ref(query, k_cache, v_cache, block_tables, seq_lens, scale)
    if max_len > block_tables.shape[1] * block_size:
        raise ValueError(f"seq_lens {seq_lens.tolist()} exceed the {block_tables.shape[1]} blocks of the table")
    slots, inside = _decode_slots(block_tables, seq_lens, block_size, max_len)
    rows = _row_index(slots, num_kv_heads, block_size, k_rows[1]).flatten()  # [batch, Hkv, max_len]
    shape = (batch, num_kv_heads, max_len, head_dim)
    k = k_rows[0].index_select(0, rows).view(shape).float()
    v = v_rows[0].index_select(0, rows).view(shape).float()
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
    num_kv_heads, block_size, head_dim = k_cache.shape[1:]
    k_rows, v_rows = _head_rows(k_cache), _head_rows(v_cache)
    if k_rows is None or v_rows is None or k_rows[1] != v_rows[1]:
        return reference.paged_prefill_attention_ref(query, k_cache, v_cache, block_tables, query_start_loc,
                                                     seq_lens, scale)
    out = torch.empty_like(query)
    group = query.shape[1] // num_kv_heads
    for b, q_start, q_end, seq_len in reference.prefill_spans(query_start_loc, seq_lens):
        q_len = q_end - q_start
        table = block_tables[b, :-(-seq_len // block_size)].long()
        if bool((table < 0).any()):
            raise ValueError(f"block table has PAD_SLOT_ID within seq_len {seq_len}: {table.tolist()}")
        positions = torch.arange(seq_len, device=query.device)
        rows = _row_index(table[positions // block_size] * block_size + positions % block_size, num_kv_heads,
                          block_size, k_rows[1]).flatten()  # [Hkv, seq_len]
        k = k_rows[0].index_select(0, rows).view(num_kv_heads, seq_len, head_dim).to(query.dtype)
        v = v_rows[0].index_select(0, rows).view(num_kv_heads, seq_len, head_dim).to(query.dtype)
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
    None where oneDNN is absent or takes neither the dtype nor the shape, and for bfloat16 on a CPU
    whose oneDNN has no bf16 path (it needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT; an AVX2-only
    EPYC raises at the reorder): the caller then keeps torch's own linear.

    Why: MKL's sgemm, which torch.nn.functional.linear calls on CPU, reached 5-9 GB/s of weight
    reads for 1-8 rows on this project's AMD CPUs (32 GB/s to sum a tensor); oneDNN on the blocked
    copy 13-23 GB/s, and 1.2-2x the FLOP/s up to 2048 rows. The copy is as large as the weight.
    """
    if not torch.backends.mkldnn.is_available() or weight.dim() != 2 or weight.dtype not in (torch.float32,
                                                                                           torch.bfloat16):
        return None
    if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), LINEAR_PACK_ROWS)
    return packed


def linear_packed_cpu(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """As torch.nn.functional.linear(x, weight, bias), `packed` being `pack_linear_weight(weight)`."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out
