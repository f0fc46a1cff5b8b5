import pytest
import torch

from kvtier.block.block_table import (
    block_table_tensor,
    slot_mapping,
    slot_mapping_tensor,
)
from kvtier.types import PAD_SLOT_ID


def test_slot_mapping_crosses_block_boundaries():
    assert slot_mapping([7, 2], 4, 2, 7) == [30, 31, 8, 9, 10]


def test_block_tables_are_int32_and_padded():
    table = block_table_tensor([[3, 1, 4], [5]])
    assert table.dtype == torch.int32
    assert table.tolist() == [[3, 1, 4], [5, PAD_SLOT_ID, PAD_SLOT_ID]]
    assert block_table_tensor([[1]], max_blocks=3).tolist() == [[1, PAD_SLOT_ID, PAD_SLOT_ID]]
    with pytest.raises(ValueError, match="block table 0 has 2 blocks, more than max_blocks=1"):
        block_table_tensor([[1, 2]], max_blocks=1)


def test_slot_mapping_tensor_pads_to_a_fixed_size():
    slots = slot_mapping_tensor([5, 6], num_padded=4)
    assert slots.dtype == torch.int64 and slots.tolist() == [5, 6, PAD_SLOT_ID, PAD_SLOT_ID]
    with pytest.raises(ValueError, match="num_padded=1 is smaller than the 2 slots given"):
        slot_mapping_tensor([5, 6], num_padded=1)
