"""Damaged objects leave their name: removed in a local tier, moved to a bounded quarantine in a
shared one (and by `kvtier cache verify --repair`), and only ever the very file judged damaged.

In a shared folder another writer may rename a good copy over a damaged object at any moment.
With `inode` (the file that was read and found damaged) only that file is touched: a local tier
checks the inode before unlinking; the quarantine move is checked after the fact, because a check
before it would race, and a good copy moved by mistake goes straight back (objects are immutable
and content-named, so putting it back over an even newer copy loses nothing).
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat

from kvtier.tiers.disk.folder import TierFolder
from kvtier.tiers.disk.names import QUARANTINE_DIR, quarantine_name

logger = logging.getLogger(__name__)
QUARANTINE_MAX_FILES = 16  # newest damaged objects kept for inspection; older ones are removed


def remove_damaged(folder: TierFolder, fanout: str, name: str, inode: int | None) -> None:
    """Unlink `fanout/name` if it is still the file `inode` names (any file when None); never raises."""
    try:
        with folder.subdir(fanout) as dir_fd:
            if inode is None or os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == inode:
                os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        logger.warning("could not remove damaged object %s/%s/%s: %s", folder.path, fanout, name, exc)


def quarantine(folder: TierFolder, fanout: str, name: str, inode: int | None) -> int | None:
    """Move `fanout/name` (if it is still the file `inode` names) to ROOT/quarantine, then trim the
    quarantine to its newest QUARANTINE_MAX_FILES files.

    Returns the quarantine's bytes afterwards, or None when it could not be used (a link or a file
    at its name, say): the damaged file is then removed instead. Never raises.
    """
    try:
        with folder.subdir(fanout) as dir_fd, folder.subdir(QUARANTINE_DIR, create=True, listing=True) as q_fd:
            moved = quarantine_name(name)
            os.rename(name, moved, src_dir_fd=dir_fd, dst_dir_fd=q_fd)
            if inode is not None and os.stat(moved, dir_fd=q_fd, follow_symlinks=False).st_ino != inode:
                logger.info("%s/%s was replaced by another writer after it was read damaged; keeping the new copy",
                            fanout, name)
                os.rename(moved, name, src_dir_fd=q_fd, dst_dir_fd=dir_fd)
            return trim_quarantine(q_fd)
    except FileNotFoundError:
        return None  # gone already (another host quarantined or replaced it)
    except OSError as exc:
        logger.warning("could not quarantine damaged object %s/%s/%s (%s); removing it instead",
                       folder.path, fanout, name, exc)
        remove_damaged(folder, fanout, name, inode)
        return None


def quarantine_files(q_fd: int) -> list[tuple[int, str, int]]:
    """`(mtime_ns, name, size)` of the regular files in the quarantine at `q_fd`, oldest first."""
    found = []
    with os.scandir(q_fd) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime_ns, entry.name, st.st_size))
    return sorted(found)


def trim_quarantine(q_fd: int, keep: int = QUARANTINE_MAX_FILES) -> int:
    """Remove all but the newest `keep` files of the quarantine at `q_fd`; its bytes afterwards."""
    files = quarantine_files(q_fd)
    for _, name, _ in files[:max(len(files) - keep, 0)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=q_fd)
    return sum(size for _, _, size in files[max(len(files) - keep, 0):])
