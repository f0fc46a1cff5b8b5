"""Warm restart: rebuild a disk tier's index from its folder, clean dead writers' temporaries.

Only names and `lstat` results are read (no headers), so a restart over 100k objects costs a
directory walk; each object is verified when it is first read. LRU order comes from mtimes.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from kvtier.tiers.disk.discard import remove_damaged, trim_quarantine
from kvtier.tiers.disk.folder import TierFolder
from kvtier.tiers.disk.index import DiskIndex
from kvtier.tiers.disk.names import QUARANTINE_DIR, object_name
from kvtier.tiers.disk.scan import FoundFile, scan_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Restart:
    """What a rebuild found to remove: objects over the budget (already dropped from the index)
    and files too large to be objects."""

    victims: list[tuple[str, str]]  # (fanout, name), least recently written first
    oversized: list[FoundFile]


def restart(index: DiskIndex, folder: TierFolder, *, capacity_bytes: int, max_object_bytes: int, shared: bool,
            stale_temp_age_s: float) -> int:
    """Rebuild `index` from `folder` (see rebuild_index), then remove what it found to remove: the
    oldest objects over `capacity_bytes`, and files too large to be objects. Returns the objects evicted.

    Raises:
        OSError: a fan-out folder cannot be read.
    """
    found = rebuild_index(index, folder, capacity_bytes=capacity_bytes, max_object_bytes=max_object_bytes,
                          shared=shared, stale_temp_age_s=stale_temp_age_s)
    for fanout, name in found.victims:
        with contextlib.suppress(OSError):
            folder.unlink(fanout, name)
    for oversized in found.oversized:
        remove_damaged(folder, oversized.fanout, oversized.name, None)
    return len(found.victims)


def rebuild_index(index: DiskIndex, folder: TierFolder, *, capacity_bytes: int, max_object_bytes: int,
                  shared: bool, stale_temp_age_s: float) -> Restart:
    """Fill `index` from the objects in `folder`, oldest first, and count its quarantine.

    Temporary files are removed when the folder is local (no other writer can exist), and in a
    shared folder only when older than `stale_temp_age_s`.

    Raises:
        OSError: a fan-out folder cannot be read.
    """
    scan = scan_folder(folder, max_object_bytes)
    for obj in sorted(scan.objects, key=lambda f: f.mtime_ns):
        assert obj.block_hash is not None, "objects carry their hash"
        index.add(obj.block_hash, obj.size)
    num_temps = 0
    for temp in scan.temps:
        if not shared or temp.is_stale(stale_temp_age_s):
            _unlink(folder, temp)
            num_temps += 1
    index.quarantine_bytes = _quarantine_bytes(folder)
    over = index.used_bytes - capacity_bytes
    victims = (index.take_victims(over) if over > 0 else None) or []
    logger.info("disk tier %s: indexed %d objects (%d bytes), removed %d temporary files, ignored %d entries, "
                "trimming %d objects to capacity", folder.path, len(index), index.used_bytes, num_temps,
                scan.num_ignored, len(victims))
    if scan.oversized:
        logger.warning("disk tier %s: %d files named like objects are larger than any object can be; removing them",
                       folder.path, len(scan.oversized))
    return Restart([object_name(block_hash) for block_hash, _ in victims], scan.oversized)


def _quarantine_bytes(folder: TierFolder) -> int:
    try:
        with folder.subdir(QUARANTINE_DIR, listing=True) as q_fd:
            return trim_quarantine(q_fd)
    except OSError:  # none yet, or a link at its name (never followed)
        return 0


def _unlink(folder: TierFolder, found: FoundFile) -> None:
    with contextlib.suppress(OSError):
        folder.unlink(found.fanout, found.name)
