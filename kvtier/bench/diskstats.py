"""Block-layer writes of the device under a folder, from /proc/diskstats: what each bench side cost the disk.

The device is the one `os.stat(folder).st_dev` names (major:minor -> /sys/dev/block/MAJ:MIN), a whole
disk or a partition; a folder on tmpfs, overlay or NFS has none, and every count is then None.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size
DISKSTATS = "/proc/diskstats"


@dataclass(frozen=True, slots=True)
class BlockCounts:
    """Write I/Os completed and sectors written, as /proc/diskstats counts them since boot."""

    write_ios: int = 0
    write_sectors: int = 0

    def __sub__(self, other: BlockCounts) -> BlockCounts:
        return BlockCounts(self.write_ios - other.write_ios, self.write_sectors - other.write_sectors)

    def __add__(self, other: BlockCounts) -> BlockCounts:
        return BlockCounts(self.write_ios + other.write_ios, self.write_sectors + other.write_sectors)

    @property
    def write_bytes(self) -> int:
        return self.write_sectors * SECTOR_BYTES


def device_of(folder: Path) -> str | None:
    """The block device name (`vda`, `nvme0n1p2`, `dm-0`) holding `folder`, or None when there is none."""
    try:
        dev = os.stat(folder).st_dev
        link = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    except OSError:
        return None
    name = os.path.basename(link)
    return name if os.path.isdir(link) and read_counts(name) is not None else None


def read_counts(device: str, stats_path: str = DISKSTATS) -> BlockCounts | None:
    """The device's row of /proc/diskstats (fields 8 and 10: writes completed, sectors written)."""
    try:
        with open(stats_path, encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 10 and fields[2] == device:
                    return BlockCounts(int(fields[7]), int(fields[9]))
    except (OSError, ValueError):
        return None
    return None


def per_op(counts: BlockCounts | None, num_ops: int) -> dict[str, float | None]:
    """Write I/Os and bytes written per block op; None without a device or without ops."""
    if counts is None or num_ops == 0:
        return {"writes_per_op": None, "write_bytes_per_op": None}
    return {"writes_per_op": counts.write_ios / num_ops, "write_bytes_per_op": counts.write_bytes / num_ops}
