"""Whole-folder operations behind `kvtier cache`: stat, verify (and repair), gc to a byte budget.

They need no layout: every object's header carries its own. They work on a folder that a live
DiskStore also uses; such a store sees removed objects as misses.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kvtier.errors import FormatError
from kvtier.tiers.disk_io import discard, open_for_read, read_whole
from kvtier.tiers.disk_paths import FoundFile, object_relpath, parse_object_name
from kvtier.tiers.disk_restart import scan_folder
from kvtier.tiers.format import (
    FIXED_HEADER_BYTES,
    BlockHeader,
    decode_block,
    decode_header,
    header_length,
)

VERIFY_THREADS = 4
MAX_LISTED = 20  # corrupt paths named in a report


def _objects(found: list[FoundFile]) -> list[FoundFile]:
    """Files named like objects, wherever they sit in the fan-out (misplaced ones fail verification)."""
    return [f for f in found if not f.is_temp and parse_object_name(os.path.basename(f.path)) is not None]


def _read_header(path: str) -> BlockHeader:
    fd, st = open_for_read(path)
    try:
        prefix = os.pread(fd, FIXED_HEADER_BYTES, 0)
        return decode_header(os.pread(fd, min(st.st_size, header_length(prefix)), 0))
    finally:
        os.close(fd)


def stat_folder(root: str) -> dict[str, Any]:
    """Objects and bytes in total and per namespace (hex), from the headers alone."""
    found = scan_folder(root)
    objects = _objects(found)
    per_namespace: dict[str, dict[str, int]] = {}
    unreadable = 0
    for obj in objects:
        try:
            namespace = _read_header(obj.path).namespace.hex()
        except (OSError, FormatError):
            unreadable += 1
            continue
        entry = per_namespace.setdefault(namespace, {"objects": 0, "bytes": 0})
        entry["objects"] += 1
        entry["bytes"] += obj.size
    return {"path": os.path.abspath(root), "objects": len(objects), "bytes": sum(f.size for f in objects),
            "unreadable": unreadable, "temporary_files": sum(f.is_temp for f in found),
            "namespaces": per_namespace}


@dataclass(frozen=True, slots=True)
class Damage:
    why: str
    inode: int | None  # the file that was read, so that a repair touches only it


def check_object(path: str) -> Damage | None:
    """None if the object at `path` verifies completely (under its own name), else what is wrong."""
    inode = None
    try:
        fd, st = open_for_read(path)
        inode = st.st_ino
        try:
            buf = read_whole(fd, st.st_size)
        finally:
            os.close(fd)
        header, _ = decode_block(buf)
    except (OSError, FormatError) as exc:
        return Damage(str(exc), inode)
    if not path.endswith(os.sep + object_relpath(header.block_hash)):
        return Damage(f"object of block {header.block_hash.hex()} is stored under the wrong name or folder", inode)
    return None


def verify_folder(root: str, repair: bool = False) -> dict[str, Any]:
    """Read and check every object; with `repair`, move the corrupt ones to ROOT/quarantine."""
    objects = _objects(scan_folder(root))
    with ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="kvtier-verify") as pool:
        problems = list(pool.map(check_object, (f.path for f in objects)))
    corrupt = [(f, damage) for f, damage in zip(objects, problems) if damage is not None]
    if repair:
        for f, damage in corrupt:
            discard(f.path, os.path.abspath(root), True, damage.inode)
    reasons = Counter(damage.why.split(":")[0] for _, damage in corrupt)
    return {"path": os.path.abspath(root), "objects": len(objects), "ok": len(objects) - len(corrupt),
            "corrupt": len(corrupt), "bytes": sum(f.size for f in objects),
            "repaired": len(corrupt) if repair else 0, "reasons": dict(reasons),
            "corrupt_paths": [f.path for f, _ in corrupt[:MAX_LISTED]]}


def gc_folder(root: str, to_bytes: int) -> dict[str, Any]:
    """Remove least recently written objects (by mtime) until the objects total at most `to_bytes`."""
    if to_bytes < 0:
        raise ValueError(f"gc budget must be >= 0 bytes, got {to_bytes}")
    objects = sorted(_objects(scan_folder(root)), key=lambda f: f.mtime_ns)
    total = sum(f.size for f in objects)
    removed = removed_bytes = 0
    for obj in objects:
        if total - removed_bytes <= to_bytes:
            break
        try:
            os.unlink(obj.path)
        except FileNotFoundError:
            pass  # removed by someone else meanwhile: its bytes are gone all the same
        removed += 1
        removed_bytes += obj.size
    return {"path": os.path.abspath(root), "objects_before": len(objects), "bytes_before": total,
            "removed": removed, "bytes_removed": removed_bytes, "objects": len(objects) - removed,
            "bytes": total - removed_bytes, "budget_bytes": to_bytes}
