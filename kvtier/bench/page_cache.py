"""Page-cache control for the storage bench: flush files and drop them, so that each slice starts cold."""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable
from pathlib import Path


def settle(folder: Path) -> int:
    """Flush and drop from the page cache every file under `folder`; returns the file count."""
    return drop_cached(os.path.join(root, name) for root, _dirs, files in os.walk(folder) for name in files)


def drop_cached(paths: Iterable[str]) -> int:
    """Flush each file and drop it from the page cache; returns how many were there.

    Called after every slice for the files it touched, tier and raw alike, so that each slice
    starts cold and no slice pays for another's write-back.
    """
    count = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed under us: nothing to flush
        try:
            os.fdatasync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


def sync_filesystem(folder: Path) -> None:
    """Write back everything dirty on `folder`'s filesystem (syncfs; sync where libc has none).

    Run after each slice's drop_cached, inside its block-layer count: the directory and inode
    updates a slice leaves dirty are then written in its own window, not during a later side's.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


_syncfs = _load_syncfs()
