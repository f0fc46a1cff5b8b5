"""Block tables and slot mappings: from a sequence's blocks to the int tensors the kernels read."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from kvtier.types import PAD_SLOT_ID, BlockId


def slot_mapping(block_ids: Sequence[BlockId], block_size: int, start: int, end: int) -> list[int]:
    """Slots of token positions [start, end) of one sequence: `block_id * block_size + offset`."""
    if not 0 <= start <= end <= len(block_ids) * block_size:
        raise ValueError(f"token range [{start}, {end}) outside the {len(block_ids)} blocks "
                         f"({len(block_ids) * block_size} slots) of this sequence")
    return [block_ids[pos // block_size] * block_size + pos % block_size for pos in range(start, end)]


def block_table_tensor(tables: Sequence[Sequence[BlockId]], device: torch.device | str = "cpu",
                       max_blocks: int | None = None) -> torch.Tensor:
    """Stack block tables into `int32 [batch, max_blocks]`, padded with PAD_SLOT_ID."""
    width = max_blocks if max_blocks is not None else max((len(t) for t in tables), default=0)
    out = torch.full((len(tables), width), PAD_SLOT_ID, dtype=torch.int32)  # [batch, max_blocks]
    for row, table in enumerate(tables):
        if len(table) > width:
            raise ValueError(f"block table {row} has {len(table)} blocks, more than max_blocks={width}")
        out[row, :len(table)] = torch.tensor(table, dtype=torch.int32)
    return out.to(device)


def slot_mapping_tensor(slots: Sequence[int], num_padded: int | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """`int64 [num_tokens]` slots, padded with PAD_SLOT_ID up to `num_padded` (CUDA-graph sizes)."""
    total = len(slots) if num_padded is None else num_padded
    if total < len(slots):
        raise ValueError(f"num_padded={num_padded} is smaller than the {len(slots)} slots given")
    return torch.tensor(list(slots) + [PAD_SLOT_ID] * (total - len(slots)), dtype=torch.int64, device=device)
