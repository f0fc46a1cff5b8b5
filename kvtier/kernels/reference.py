"""Pure-torch references for every kernel: same signatures as the launchers, float32 math.

Written for clarity rather than speed. They are the oracles of the kernel tests and serve the CPU
path of the library (`kvtier.ops`) where kernels/cpu.py has no faster twin. This module never
imports triton.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

PAD_SLOT_ID = -1  # mirrors kvtier.types.PAD_SLOT_ID; kept local so kvtier/kernels/ stands alone


def store_kv_ref(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write K/V `[num_tokens, num_kv_heads, head_dim]` into `slot_mapping` slots; -1 is skipped.

    Caches are `[num_blocks, num_kv_heads, block_size, head_dim]`; slot = block_id * block_size + offset.
    """
    block_size = k_cache.shape[2]
    keep = slot_mapping != PAD_SLOT_ID
    slots = slot_mapping[keep].long()
    block_ids, offsets = slots // block_size, slots % block_size
    k_cache[block_ids, :, offsets] = key[keep].to(k_cache.dtype)  # NOTE: indexed dims first: [n, Hkv, D]
    v_cache[block_ids, :, offsets] = value[keep].to(v_cache.dtype)


def _tokens(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """The blocks' tokens in order, `[..., len(block_ids[-1]) * block_size, num_kv_heads, head_dim]`."""
    picked = cache[block_ids]  # [..., n, num_kv_heads, block_size, head_dim]
    return picked.transpose(-3, -2).flatten(-4, -3)


def _gather_seq(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len tokens of one sequence: [seq_len, num_kv_heads, head_dim] in float32."""
    block_size = cache.shape[2]
    num_blocks = -(-seq_len // block_size)
    block_ids = block_table[:num_blocks].long()
    if bool((block_ids < 0).any()):
        raise ValueError(f"block table has PAD_SLOT_ID within seq_len {seq_len}: {block_ids.tolist()}")
    return _tokens(cache, block_ids)[:seq_len].float()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            positions: torch.Tensor) -> torch.Tensor:
    """Causal attention in float32. q [n, H, D] at `positions`; k, v [L, Hkv, D]. Returns [n, H, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
    v = v.repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(q.float().transpose(0, 1), k.transpose(1, 2)) * scale  # [H, n, L]
    key_pos = torch.arange(k.shape[1], device=q.device)
    scores = scores.masked_fill(key_pos[None, None, :] > positions[None, :, None], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v).transpose(0, 1)  # [n, H, D]


def paged_decode_attention_ref(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """One new token per sequence: query/out [batch, num_heads, head_dim]. seq_len 0 gives zeros.

    The whole batch at once: every sequence's blocks gathered to the longest one's length, the
    positions past each sequence's length masked, each query head grouped with its KV head.
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    max_len = int(seq_lens.max()) if batch else 0
    if max_len == 0:
        return torch.zeros_like(query)
    num_blocks = -(-max_len // block_size)
    tables = block_tables[:, :num_blocks].long()
    needed = torch.arange(num_blocks, device=query.device)[None, :] < (-(-seq_lens.long() // block_size))[:, None]
    if bool(((tables < 0) & needed).any()):
        raise ValueError(f"block table has PAD_SLOT_ID within seq_lens {seq_lens.tolist()}: {tables.tolist()}")
    tables = tables.clamp(min=0)  # padding past a sequence's end: read block 0, masked below
    k = _tokens(k_cache, tables)[:, :max_len].float()  # [batch, max_len, num_kv_heads, head_dim]
    v = _tokens(v_cache, tables)[:, :max_len].float()
    q = query.float().view(batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", q, k) * scale  # [batch, num_kv_heads, group, max_len]
    past_end = torch.arange(max_len, device=query.device)[None, :] >= seq_lens.long()[:, None]  # [batch, max_len]
    scores = scores.masked_fill(past_end[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a sequence of length 0: every score -inf
    v = v.masked_fill(past_end[:, :, None, None], 0.0)  # NOTE: padding may hold NaN, and 0 * NaN is NaN
    out = torch.einsum("bhgl,blhd->bhgd", probs, v)  # [batch, num_kv_heads, group, head_dim]
    return out.reshape(batch, num_heads, head_dim).to(query.dtype)


def prefill_spans(query_start_loc: torch.Tensor, seq_lens: torch.Tensor) -> Iterator[tuple[int, int, int, int]]:
    """`(sequence, first row, end row, seq_len)` of each sequence with new tokens in a varlen batch.

    Raises:
        ValueError: a sequence has more new tokens than its length.
    """
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[b], starts[b + 1]
        if q_end - q_start > seq_len:
            raise ValueError(f"sequence {b} has {q_end - q_start} new tokens but seq_len {seq_len}")
        if q_end > q_start:
            yield b, q_start, q_end, seq_len


def paged_prefill_attention_ref(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                                seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal varlen attention of new tokens [total_new_tokens, num_heads, head_dim] over the cache."""
    out = torch.zeros_like(query)
    for b, q_start, q_end, seq_len in prefill_spans(query_start_loc, seq_lens):
        q_len = q_end - q_start
        k = _gather_seq(k_cache, block_tables[b], seq_len)
        v = _gather_seq(v_cache, block_tables[b], seq_len)
        positions = torch.arange(seq_len - q_len, seq_len, device=query.device)
        out[q_start:q_end] = _attend(query[q_start:q_end], k, v, scale, positions).to(out.dtype)
    return out


def gather_blocks_ref(kv_cache: torch.Tensor, block_ids: torch.Tensor,
                      out: torch.Tensor) -> torch.Tensor:
    """kv_cache [num_blocks, L, 2, Hkv, block_size, D] -> out [n, L, 2, Hkv, block_size, D]: block_ids' rows."""
    return torch.index_select(kv_cache, 0, block_ids.long(), out=out)


def scatter_blocks_ref(staging: torch.Tensor, block_ids: torch.Tensor,
                       kv_cache: torch.Tensor) -> torch.Tensor:
    """The inverse of gather_blocks_ref: staging [n, L, 2, Hkv, block_size, D] into kv_cache's rows block_ids."""
    return kv_cache.index_copy_(0, block_ids.long(), staging.to(kv_cache.dtype))
