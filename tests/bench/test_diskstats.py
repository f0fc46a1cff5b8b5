"""Block-layer counts: a diskstats row read by name, deltas, per-op figures, the device of a folder."""
from __future__ import annotations

from pathlib import Path

from kvtier.bench.diskstats import BlockCounts, device_of, per_op, read_counts

ROWS = ("   8       0 sda 10 0 80 5 200 3 4096 7 0 9 12 0 0 0 0 0 0\n"
        "   8       1 sda1 9 0 72 5 150 3 4000 7 0 9 12 0 0 0 0 0 0\n")


def test_read_counts_takes_writes_completed_and_sectors_written_of_the_named_row(tmp_path: Path) -> None:
    stats = tmp_path / "diskstats"
    stats.write_text(ROWS)
    assert read_counts("sda1", str(stats)) == BlockCounts(write_ios=150, write_sectors=4000)
    assert read_counts("sda", str(stats)) == BlockCounts(200, 4096)
    assert read_counts("nvme0n1", str(stats)) is None
    assert read_counts("sda", str(tmp_path / "missing")) is None


def test_per_op_divides_a_delta_by_the_ops_and_says_none_without_counts() -> None:
    delta = BlockCounts(250, 4096) - BlockCounts(50, 2048)
    assert per_op(delta, 4) == {"writes_per_op": 50.0, "write_bytes_per_op": 2048 * 512 / 4}
    assert per_op(None, 4) == per_op(delta, 0) == {"writes_per_op": None, "write_bytes_per_op": None}


def test_device_of_a_folder_is_a_diskstats_row_or_none(tmp_path: Path) -> None:
    device = device_of(tmp_path)
    assert device is None or read_counts(device) is not None
    assert device_of(tmp_path / "missing") is None
