"""Synthetic KV data and chat traces: block contents that are a pure function of the block hash,
so any block can be checked wherever it comes back from, and multi-turn conversations to replay."""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kvtier.config import KVLayout

if TYPE_CHECKING:
    from kvtier.block.manager import SeqState
    from kvtier.cache import TieredKVCache


def block_content(layout: KVLayout, block_hash: bytes) -> torch.Tensor:
    """A block of `layout.block_shape` whose values depend only on `block_hash`."""
    gen = torch.Generator().manual_seed(int.from_bytes(block_hash[:8], "little"))
    return torch.randn(layout.block_shape, generator=gen).to(layout.dtype)


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of a conversation: its id and the whole prompt (history + new user message)."""

    conversation: int
    turn: int
    prompt: list[int]
    reply_len: int


def chat_trace(num_conversations: int, num_turns: int, *, system_len: int = 64, user_len: int = 48,
               reply_len: int = 32, vocab: int = 32000, seed: int = 0) -> Iterator[Turn]:
    """Interleaved multi-turn chats sharing one system prompt; each turn resends the whole history."""
    rng = random.Random(seed)
    system = [rng.randrange(vocab) for _ in range(system_len)]
    histories = [list(system) for _ in range(num_conversations)]
    for turn in range(num_turns):
        order = list(range(num_conversations))
        rng.shuffle(order)
        for conv in order:
            histories[conv] += [rng.randrange(vocab) for _ in range(user_len)]
            yield Turn(conv, turn, list(histories[conv]), reply_len)
            histories[conv] += [rng.randrange(vocab) for _ in range(reply_len)]


def compute_blocks(cache: TieredKVCache, seq: SeqState, start_block: int, stop_block: int) -> None:
    """Stand-in for a forward pass: write full blocks [start, stop) of `seq` with their synthetic content."""
    if stop_block > len(seq.block_hashes):
        seq.block_hashes += cache.manager.hash_tokens(seq.token_ids, seq.namespace,
                                                      seq.extra_keys)[len(seq.block_hashes):]
    ids = seq.block_ids[start_block:stop_block]
    if ids:
        hashes = seq.block_hashes[start_block:stop_block]
        cache.pool.write_blocks(ids, torch.stack([block_content(cache.layout, h) for h in hashes]))


def check_served_blocks(cache: TieredKVCache, seq: SeqState) -> int:
    """Compare every block the cache served to `seq` with its synthetic content; returns how many.

    Raises:
        AssertionError: a served block differs from what was written (naming the block).
    """
    num_served = seq.num_cached_tokens // cache.layout.block_size
    for i in range(num_served):
        served = cache.pool.read_blocks([seq.block_ids[i]])[0].cpu()
        if not torch.equal(served, block_content(cache.layout, seq.block_hashes[i])):
            raise AssertionError(f"block {i} of {seq.seq_id!r} came back different from what was written")
    return num_served


def run_prefill(cache: TieredKVCache, seq: SeqState) -> int:
    """Stand-in for a prefill: check the served blocks, compute the rest, register every full block.

    Returns the number of blocks the cache served (each checked bit-identical).
    """
    num_served = check_served_blocks(cache, seq)
    compute_blocks(cache, seq, num_served, len(seq.token_ids) // cache.layout.block_size)
    cache.mark_computed(seq.seq_id, len(seq.token_ids))
    return num_served
