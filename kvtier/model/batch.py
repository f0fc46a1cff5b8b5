"""ForwardBatch: the tensors one forward step reads, built on the CPU from each sequence's chunk.

A step computes, for each sequence, a chunk of new tokens at positions [start, start + n) over
its block table; the cache then holds that sequence's first `start + n` tokens. A decode step is
one new token per sequence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kvtier.block.block_table import block_table_tensor, slot_mapping
from kvtier.types import BlockId


@dataclass(frozen=True, slots=True)
class Chunk:
    """New tokens of one sequence for one step: `token_ids` at positions `start ...`."""

    block_ids: Sequence[BlockId]
    start: int
    token_ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    token_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    block_tables: torch.Tensor  # int32 [batch, max_blocks]
    seq_lens: torch.Tensor  # int32 [batch]: tokens in the cache after this step
    query_start_loc: torch.Tensor  # int32 [batch + 1]: where each sequence's new tokens start
    logits_indices: torch.Tensor  # int64 [batch]: each sequence's last new token
    is_decode: bool  # one new token per sequence

    @classmethod
    def build(cls, chunks: Sequence[Chunk], block_size: int, device: torch.device | str) -> ForwardBatch:
        """The batch of `chunks` (each with at least one token), on `device`."""
        if not chunks or any(not c.token_ids for c in chunks):
            raise ValueError(f"a forward step needs at least one chunk of at least one token, got {len(chunks)}")
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        for chunk in chunks:
            end = chunk.start + len(chunk.token_ids)
            tokens += chunk.token_ids
            positions += range(chunk.start, end)
            slots += slot_mapping(chunk.block_ids, block_size, chunk.start, end)
            starts.append(len(tokens))

        def ints(values: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(list(values), dtype=dtype).to(device)

        return cls(token_ids=ints(tokens, torch.int64), positions=ints(positions, torch.int64),
                   slot_mapping=ints(slots, torch.int64),
                   block_tables=block_table_tensor([c.block_ids for c in chunks], device),
                   seq_lens=ints([c.start + len(c.token_ids) for c in chunks], torch.int32),
                   query_start_loc=ints(starts, torch.int32),
                   logits_indices=ints([s - 1 for s in starts[1:]], torch.int64),
                   is_decode=all(len(c.token_ids) == 1 for c in chunks))
