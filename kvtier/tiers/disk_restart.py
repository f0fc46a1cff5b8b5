"""Warm restart: rebuild a disk tier's index from its folder, clean dead writers' temporaries.

Only names and `stat` results are read (no headers), so a restart over 100k objects costs a
directory walk; each object is verified when it is first read. LRU order comes from mtimes
(reads touch them in local folders).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from kvtier.config import DiskTierConfig
from kvtier.tiers.disk_index import DiskIndex
from kvtier.tiers.disk_paths import (
    FoundFile,
    hex_subdirs,
    is_stale,
    object_relpath,
    scan_leaf,
)

logger = logging.getLogger(__name__)
SCAN_THREADS = 8  # os.scandir and stat release the GIL; a few threads hide NFS round trips


def scan_folder(root: str) -> list[FoundFile]:
    """Every file in the fan-out folders of `root` (one task per folder)."""
    with ThreadPoolExecutor(max_workers=SCAN_THREADS, thread_name_prefix="kvtier-scan") as pool:
        return [found for batch in pool.map(scan_leaf, hex_subdirs(root)) for found in batch]


def rebuild_index(index: DiskIndex, root: str, config: DiskTierConfig, stale_temp_age_s: float) -> list[str]:
    """Fill `index` from the objects under `root`, oldest first.

    Temporary files are removed when the folder is local (no other writer can exist), and in a
    shared folder only when older than `stale_temp_age_s`.

    Returns:
        Paths of the least recently used objects to remove so the index fits `capacity_bytes`
        (already dropped from the index).
    """
    found = scan_folder(root)
    objects = sorted((f for f in found if f.block_hash is not None), key=lambda f: f.mtime_ns)
    for obj in objects:
        assert obj.block_hash is not None, "filtered above"
        index.add(obj.block_hash, obj.size)
    num_temps = 0
    for temp in (f for f in found if f.is_temp):
        if not config.shared or is_stale(temp, stale_temp_age_s):
            _unlink(temp.path)
            num_temps += 1
    over = index.used_bytes - config.capacity_bytes
    victims = index.take_victims(over) if over > 0 else []
    logger.info("disk tier %s: indexed %d objects (%d bytes), removed %d temporary files, "
                "trimming %d objects to capacity", root, len(index), index.used_bytes, num_temps,
                len(victims or []))
    return [os.path.join(root, object_relpath(block_hash)) for block_hash, _ in victims or []]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        logger.debug("temporary file %s already gone: %s", path, exc)
