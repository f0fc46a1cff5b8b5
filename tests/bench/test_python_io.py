"""PythonFileTier: the python side's files and the --calibrate tier round-trip, miss and evict."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvtier.bench.python_io import PYTHON_SUFFIX, PythonFileTier
from kvtier.bench.storage import layout_for_block_bytes
from kvtier.bench.tier_ops import data_pool
from kvtier.bench.workload import PrefixChains, WorkloadConfig, write_trace
from kvtier.config import DiskTierConfig
from kvtier.errors import TierIOError

BLOCK_BYTES = 64 << 10


def test_python_side_round_trips_and_reports_missing_files(tmp_path: Path) -> None:
    layout = layout_for_block_bytes(BLOCK_BYTES)
    pool = data_pool(layout, seed=0)
    side = PythonFileTier(layout, DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 30, fsync=False),
                      suffix=PYTHON_SUFFIX, pool=pool)
    op = next(write_trace(PrefixChains(WorkloadConfig()), len(pool)))
    side.write(op)
    assert Path(side.path_of(op.key.block_hash)).read_bytes() == pool[0].view(torch.uint8).numpy().tobytes()
    assert side.path_of(op.key.block_hash) == f"{tmp_path}/{op.key.block_hash.hex()[:2]}/{op.key.block_hash.hex()}.pyio"
    side.read(op)
    Path(side.path_of(op.key.block_hash)).unlink()
    with pytest.raises(TierIOError, match="missing"):
        side.read(op)


def test_python_file_tier_round_trips_misses_and_evicts(tmp_path: Path) -> None:
    layout = layout_for_block_bytes(BLOCK_BYTES)
    tier = PythonFileTier(layout, DiskTierConfig(path=str(tmp_path / "t"), capacity_bytes=1 << 30))
    pool = data_pool(layout, seed=1)
    key = next(write_trace(PrefixChains(WorkloadConfig()), len(pool))).key
    assert tier.get(key) is None and not tier.contains(key.block_hash)
    tier.put(key, pool[0])
    assert tier.contains(key.block_hash) and tier.num_blocks == 1
    assert torch.equal(tier.get(key), pool[0])
    strided = torch.empty(layout.block_shape[::-1], dtype=layout.dtype).permute(4, 3, 2, 1, 0)
    assert tier.get(key, out=strided) is strided and torch.equal(strided, pool[0])
    assert tier.evict(key.block_hash) and not tier.evict(key.block_hash) and tier.num_blocks == 0
