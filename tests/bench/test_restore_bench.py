"""benches/bench_restore.py's measurement on a small layout: every round restores the whole prefix
from disk after a warm restart, and the floor reads the very same files (warm and cold)."""
from __future__ import annotations

import pytest
import torch

from kvtier.bench.restore import restore_bench
from kvtier.config import KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=16, block_size=8, dtype=torch.float16)


@pytest.mark.parametrize("cold", [False, True])
def test_each_round_restores_every_block_and_reads_the_same_files(tmp_path, cold: bool) -> None:
    row = restore_bench(LAYOUT, prefix_tokens=80, rounds=2, folder=str(tmp_path), num_workers=2, cold=cold)
    assert row["blocks"] == 10 and row["bytes"] == 10 * LAYOUT.page_size_bytes
    assert len(row["restore_s"]) == len(row["floor_s"]) == 2 and min(row["restore_s"] + row["floor_s"]) > 0
    assert row["page_cache"] == ("cold" if cold else "warm") and list(tmp_path.iterdir()) == []
