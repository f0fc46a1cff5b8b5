"""Publish an object without a temporary name: write an O_TMPFILE inode, then link it into place.

The inode has no name until it is whole (and, with fsync, durable), so readers never see it
half-written, and a writer killed midway leaves nothing behind: the kernel frees the inode.
Against create-a-temporary-then-rename it saves the rename and the journal work of a second
name. Linux only, and only where the filesystem supports O_TMPFILE (ext4, XFS, btrfs, tmpfs;
not NFS), so a store probes it at start and otherwise keeps temporary names (disk_io.write_object).

Linking an open file needs `linkat(fd, "", AT_EMPTY_PATH)` (CAP_DAC_READ_SEARCH, so usually
root) or `linkat` through `/proc/self/fd/N`; the probe tries both.
NOTE: in this project's sandbox the /proc route returns EXDEV on every filesystem, while
AT_EMPTY_PATH works; on other machines it is often the other way round.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Sequence

from kvtier.tiers.disk_io import O_CLOEXEC, write_all
from kvtier.tiers.disk_paths import unique_suffix
from kvtier.tiers.format import BufferLike

logger = logging.getLogger(__name__)
O_TMPFILE = getattr(os, "O_TMPFILE", None)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

Linker = Callable[[int, str], None]  # (fd of an O_TMPFILE inode, path to give it); raises OSError


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _link_empty_path(fd: int, path: str) -> None:
    if _libc().linkat(fd, b"", AT_FDCWD, os.fsencode(path), AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)


def _link_proc_fd(fd: int, path: str) -> None:
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def links_through_proc(linker: Linker) -> bool:
    """Whether `linker` links through /proc/self/fd/N (else through AT_EMPTY_PATH)."""
    return linker is _link_proc_fd


def find_linker(folder: str) -> Linker | None:
    """The first way of linking O_TMPFILE inodes that works in `folder`, or None; logs the outcome."""
    if O_TMPFILE is None:
        return None
    for linker in (_link_empty_path, _link_proc_fd):
        probe = os.path.join(folder, f".tmpfile-probe.{unique_suffix()}")
        try:
            fd = os.open(folder, O_TMPFILE | os.O_WRONLY | O_CLOEXEC, 0o644)
        except OSError as exc:
            logger.info("O_TMPFILE is not supported in %s (%s); objects get temporary names", folder, exc)
            return None
        try:
            linker(fd, probe)
        except (OSError, AttributeError) as exc:  # AttributeError: no linkat in this libc
            logger.debug("linking O_TMPFILE inodes with %s fails in %s: %s", linker.__name__, folder, exc)
            continue
        finally:
            os.close(fd)
        os.unlink(probe)
        return linker
    logger.info("O_TMPFILE inodes cannot be linked in %s; objects get temporary names", folder)
    return None


def publish_unnamed(final_path: str, temp_path: Callable[[], str], parts: Sequence[BufferLike], fsync: bool,
                    link: Linker) -> None:
    """Write `parts` to a nameless inode in `final_path`'s folder, optionally fsync, and link it there.

    If `final_path` exists already (a leftover the index did not know), the new object replaces
    it atomically: linked at a name from `temp_path()`, then renamed. Raises OSError with
    nothing left behind.
    """
    folder = os.path.dirname(final_path)
    fd = os.open(folder, O_TMPFILE | os.O_WRONLY | O_CLOEXEC, 0o644)  # type: ignore[operator]  # probed: not None
    try:
        write_all(fd, parts)
        if fsync:
            os.fsync(fd)
        try:
            link(fd, final_path)
        except FileExistsError:
            temp = temp_path()
            link(fd, temp)
            try:
                os.rename(temp, final_path)
            except OSError:
                os.unlink(temp)
                raise
    finally:
        os.close(fd)
