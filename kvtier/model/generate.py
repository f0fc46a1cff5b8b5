"""A plain batched decoding loop over a TieredKVCache: reuse what the cache holds, prefill the
rest of each prompt in one step, then one decode step per new token for every live sequence.

The engine (continuous batching, chunked prefill, preemption) builds on the same three calls:
`allocate`, a forward step over Chunks, `mark_computed`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kvtier.cache import TieredKVCache
from kvtier.model.batch import Chunk, ForwardBatch
from kvtier.model.decoder import Transformer
from kvtier.types import Namespace, SeqId


@dataclass(slots=True)
class Generation:
    """One prompt's new tokens, and how many of its prompt tokens came from the cache."""

    token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    finish_reason: str = "length"


def generate_greedy(model: Transformer, cache: TieredKVCache, prompts: Sequence[Sequence[int]], namespace: Namespace,
                    *, max_new_tokens: int) -> list[Generation]:
    """Greedy decoding of every prompt at once; stops a sequence at an EoS token or `max_new_tokens`.

    Raises:
        OutOfBlocksError: the device pool cannot hold every prompt at once.
    """
    seq_ids = [SeqId(f"generate-{i}") for i in range(len(prompts))]
    results = [Generation() for _ in prompts]
    try:
        chunks = []
        for seq_id, prompt, result in zip(seq_ids, prompts, results):
            seq = cache.allocate(seq_id, prompt, namespace)
            result.num_cached_tokens = seq.num_cached_tokens
            chunks.append(Chunk(seq.block_ids, seq.num_cached_tokens, list(prompt[seq.num_cached_tokens:])))
        live = list(range(len(prompts)))
        while live and chunks:
            next_ids = _step(model, cache, chunks, [seq_ids[i] for i in live])
            live = [i for i, token in zip(live, next_ids) if _accept(model, results[i], token, max_new_tokens)]
            chunks = [_decode_chunk(cache, seq_ids[i], results[i].token_ids[-1]) for i in live]
    finally:
        for seq_id in seq_ids:
            if seq_id in cache.manager.seqs:
                cache.free(seq_id)
    return results


def _step(model: Transformer, cache: TieredKVCache, chunks: list[Chunk], seq_ids: list[SeqId]) -> list[int]:
    batch = ForwardBatch.build(chunks, cache.layout.block_size, cache.pool.device)
    logits = model(batch, cache.pool)  # [batch, vocab]
    for seq_id, chunk in zip(seq_ids, chunks):
        cache.mark_computed(seq_id, chunk.start + len(chunk.token_ids))
    return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]


def _accept(model: Transformer, result: Generation, token: int, max_new_tokens: int) -> bool:
    """Record a new token; whether its sequence goes on."""
    result.token_ids.append(token)
    if token in model.config.eos_token_ids:
        result.finish_reason = "stop"
        return False
    return len(result.token_ids) < max_new_tokens


def _decode_chunk(cache: TieredKVCache, seq_id: SeqId, token: int) -> Chunk:
    cache.append(seq_id, [token])
    seq = cache.manager.seq(seq_id)
    return Chunk(seq.block_ids, len(seq.token_ids) - 1, [token])
