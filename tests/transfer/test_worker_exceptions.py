"""No exception is dropped on an engine worker: a spill or onload that raises anything is counted and logged."""
from __future__ import annotations

import logging

import pytest
import torch

from kvtier.config import KVLayout
from kvtier.errors import TierIOError
from kvtier.transfer.engine import TransferEngine
from kvtier.transfer.onload import LowerHit
from tests.transfer.fake_tier import FakeTier, make_block, make_key

ENGINE_LOG = "kvtier.transfer.engine"
OTHER_LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=4, block_size=2, dtype=torch.float16)


def test_spill_to_a_tier_of_another_layout_is_counted_and_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    tier, engine = FakeTier(OTHER_LAYOUT), TransferEngine(num_workers=1)
    with caplog.at_level(logging.WARNING, logger=ENGINE_LOG):
        stored = engine.spill(tier, make_key(0), make_block(0)).result(timeout=10)  # put raises ValueError
    engine.close()
    assert stored is False and engine.failed_writes == 1 and tier.num_blocks == 0
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "spill of block" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_spill_tier_fault_stays_a_warning_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    tier, engine = FakeTier(), TransferEngine(num_workers=1)
    tier.put_faults[make_key(0).block_hash] = TierIOError("injected EIO")
    with caplog.at_level(logging.WARNING, logger=ENGINE_LOG):
        assert engine.spill(tier, make_key(0), make_block(0)).result(timeout=10) is False
    engine.close()
    (record,) = caplog.records
    assert engine.failed_writes == 1 and record.levelno == logging.WARNING and record.exc_info is None
    assert "injected EIO" in record.getMessage()


@pytest.mark.parametrize("waiting", [False, True], ids=["workers", "caller's thread"])
def test_onload_read_that_raises_anything_is_a_counted_logged_miss(caplog: pytest.LogCaptureFixture,
                                                                   waiting: bool) -> None:
    tier, engine = FakeTier(), TransferEngine(num_workers=1)
    keys = [make_key(i) for i in range(4)]
    for i, key in enumerate(keys):
        tier.put(key, make_block(i))
        tier.pin(key.block_hash)
    tier.get_faults[keys[2].block_hash] = RuntimeError("driver bug")
    with caplog.at_level(logging.WARNING, logger=ENGINE_LOG):
        loaded = engine.onload([LowerHit(tier, key) for key in keys], waiting=waiting).wait(timeout_s=10)
        engine.close()  # the fourth read has run or been cancelled
    assert [int(block.flatten()[0]) for block in loaded] == [0, 1]  # the run before the fault is kept
    assert engine.failed_reads == 1 and engine.failed_writes == 0 and tier.num_pinned == 0
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "onload of block" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
