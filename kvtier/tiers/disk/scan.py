"""Walk a tier's fan-out folders: objects, temporaries, and what is neither, from names and `lstat` alone.

Only regular files named exactly like an object, in the folder that name maps to, and no larger
than an object can be are objects. A file named like one but larger is `oversized`; one in
another fan-out folder is `misplaced` (a store never finds it; `kvtier cache verify` reports it);
links, FIFOs, folders, crafted and foreign names are `ignored` (counted, never opened or removed).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from kvtier.tiers.disk.folder import TierFolder
from kvtier.tiers.disk.names import FANOUT_DIRS, is_temp_name, parse_object_name
from kvtier.types import BlockHash

NUM_SCAN_THREADS = 8  # os.scandir and stat release the GIL; a few threads hide NFS round trips
FileKind = Literal["object", "temp", "oversized", "misplaced", "ignored"]


class FoundFile(NamedTuple):
    """An entry of a fan-out folder and what it is (a NamedTuple: a restart builds one per object)."""

    fanout: str
    name: str
    size: int
    mtime_ns: int
    kind: FileKind
    block_hash: BlockHash | None  # set for objects, oversized and misplaced files

    @property
    def relpath(self) -> str:
        return f"{self.fanout}/{self.name}"

    def is_stale(self, max_age_s: float) -> bool:
        return time.time_ns() - self.mtime_ns > max_age_s * 1e9


@dataclass(slots=True)
class FolderScan:
    """Everything found in the fan-out, by kind; `num_ignored` also counts links or files at fan-out names."""

    objects: list[FoundFile] = field(default_factory=list)
    temps: list[FoundFile] = field(default_factory=list)
    oversized: list[FoundFile] = field(default_factory=list)
    misplaced: list[FoundFile] = field(default_factory=list)
    num_ignored: int = 0

    def add(self, found: FoundFile) -> None:
        if found.kind == "object":
            self.objects.append(found)
        elif found.kind == "ignored":
            self.num_ignored += 1
        else:
            getattr(self, _LISTS[found.kind]).append(found)

    def merge(self, other: FolderScan) -> None:
        for name in _LISTS.values():
            getattr(self, name).extend(getattr(other, name))
        self.num_ignored += other.num_ignored


_LISTS = {"object": "objects", "temp": "temps", "oversized": "oversized", "misplaced": "misplaced"}


def scan_folder(folder: TierFolder, max_object_bytes: int) -> FolderScan:
    """Every entry of the 256 fan-out folders (one task per folder).

    Raises:
        OSError: a fan-out folder exists but cannot be read (EACCES, EIO): an empty answer would lie.
    """
    scan = FolderScan()
    with ThreadPoolExecutor(max_workers=NUM_SCAN_THREADS, thread_name_prefix="kvtier-scan") as pool:
        for leaf in pool.map(lambda name: _scan_leaf(folder, name, max_object_bytes), FANOUT_DIRS):
            scan.merge(leaf)
    return scan


def _scan_leaf(folder: TierFolder, fanout: str, max_object_bytes: int) -> FolderScan:
    """The entries of one fan-out folder: none when it does not exist, one ignored entry when a
    link or a file sits at its name."""
    leaf = FolderScan()
    try:
        with folder.subdir(fanout, listing=True) as fd, os.scandir(fd) as entries:
            for entry in entries:
                leaf.add(_classify(fanout, entry, max_object_bytes))
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        leaf.num_ignored += 1
    return leaf


def _classify(fanout: str, entry: os.DirEntry[str], max_object_bytes: int) -> FoundFile:
    name = entry.name
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:  # removed while scanning
        return FoundFile(fanout, name, 0, 0, "ignored", None)
    block_hash = parse_object_name(name)
    kind: FileKind = "ignored"
    if stat.S_ISREG(st.st_mode):
        if block_hash is not None and not name.startswith(fanout):
            kind = "misplaced"
        elif block_hash is not None:
            kind = "object" if st.st_size <= max_object_bytes else "oversized"
        elif is_temp_name(name):
            kind = "temp"
    return FoundFile(fanout, name, st.st_size, st.st_mtime_ns, kind, block_hash if kind != "ignored" else None)
