"""The folder of a disk tier: opened once, and entered only through real sub-folders, never a link.

Every file operation runs relative to a directory descriptor opened with O_NOFOLLOW from the
root's descriptor, so a fan-out or quarantine folder replaced by a link (or a file) cannot lead a
write, read or delete outside the root: the open fails with ENOTDIR instead.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import weakref
from collections.abc import Iterator

from kvtier.errors import TierIOError
from kvtier.tiers.disk.names import FANOUT_DIRS

logger = logging.getLogger(__name__)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # NOTE: Linux; elsewhere a read-only open serves as a handle
SUBDIR_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | O_CLOEXEC
LISTING_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | O_CLOEXEC  # os.scandir needs a readable fd
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC  # NOTE: the root itself may be a link the user made

_REMEDIES = {
    errno.EACCES: "permission denied: check the owner and mode of {path} (and of its parents), or choose another path",
    errno.EPERM: "permission denied: check the owner and mode of {path} (and of its parents), or choose another path",
    errno.EROFS: "the filesystem is read-only: remount it read-write or choose another path",
    errno.ENOSPC: "free space on the filesystem (bytes or inodes), or raise min_free_bytes so the tier evicts first",
    errno.EDQUOT: "raise the disk quota, free space, or raise min_free_bytes so the tier evicts first",
    errno.ENOTDIR: "{path} or a folder in it is not a real folder (a file, or a link, which a tier never "
                   "follows inside its root); remove it and kvtier recreates the folder",
    errno.ELOOP: "{path} or a folder in it is a link, which a tier never follows inside its root; "
                 "remove it and kvtier recreates the folder",
    errno.EISDIR: "a folder sits at an object's name in {path}; remove it",
    errno.EEXIST: "a folder sits at an object's name in {path}; remove it",
}
_NOT_A_FOLDER = "choose the path of a folder, or of one to create"


def io_error(what: str, path: str, exc: OSError, consequence: str = "", remedy: str | None = None) -> TierIOError:
    """A TierIOError naming what failed, where, the errno, and the remedy (by default, the errno's)."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if remedy is None:
        remedy = _REMEDIES.get(exc.errno or 0, "check the device and the mount ({path})").format(path=path)
    return TierIOError(f"{what} failed ({name}: {exc.strerror or exc}){consequence}; {remedy}")


class TierFolder:
    """A tier's root, held open; `subdir` hands out descriptors of its real sub-folders."""

    def __init__(self, path: str, dir_mode: int, *, existing: bool = False) -> None:
        """Open (and make, unless `existing`) the folder at `path`.

        Raises:
            TierIOError: it cannot be a writable tier folder (not `existing`).
            OSError: with `existing`, it cannot be opened (for tools that only read or trim).
        """
        self.path = os.path.abspath(path)
        self.dir_mode = dir_mode
        self.fd = os.open(self.path, ROOT_FLAGS) if existing else _open_root(self.path, dir_mode)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        """Close the root's descriptor; later operations fail with EBADF instead of reaching another folder."""
        self._closer()
        self.fd = -1

    def make_fanout(self) -> None:
        """The 256 fan-out folders up front (a few ms once), so that no put pays for creating one."""
        for name in FANOUT_DIRS:
            try:
                os.mkdir(name, self.dir_mode, dir_fd=self.fd)
            except FileExistsError:
                continue
            except OSError as exc:  # no inode or quota left: puts make what they need, or fail typed
                logger.warning("could not create the fan-out folders of %s (%s); they will be made on use",
                               self.path, exc)
                return

    @contextlib.contextmanager
    def subdir(self, name: str, *, create: bool = False, listing: bool = False) -> Iterator[int]:
        """A descriptor of the real folder ROOT/name (ENOTDIR if it is a link or a file).

        `create` makes it when missing; `listing` opens it readable, for os.scandir.
        """
        flags = LISTING_FLAGS if listing else SUBDIR_FLAGS
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, self.dir_mode, dir_fd=self.fd)
            fd = os.open(name, flags, dir_fd=self.fd)
        try:
            yield fd
        finally:
            os.close(fd)


    def unlink(self, subdir: str, name: str) -> bool:
        """Remove ROOT/subdir/name (never through a link); False if it was gone already. Raises OSError."""
        with self.subdir(subdir) as dir_fd:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
        return True

    def lstat(self, subdir: str, name: str) -> os.stat_result | None:
        """`lstat` of ROOT/subdir/name (never through a link), or None when it cannot be seen."""
        try:
            with self.subdir(subdir) as dir_fd:
                return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None


def remove_probe(root_fd: int, fanout: str, name: str) -> None:
    """Remove a probe's file ROOT/fanout/name (never through a link), if it is there; errors are ignored."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=root_fd)
        try:
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)


def _open_root(path: str, dir_mode: int) -> int:
    """The root's descriptor, made if missing; a typed error when it cannot be a writable folder."""
    try:
        os.makedirs(path, mode=dir_mode, exist_ok=True)
        fd = os.open(path, ROOT_FLAGS)
    except (FileExistsError, NotADirectoryError) as exc:
        raise io_error(f"opening disk tier folder {path}", path, exc, ": it is not a folder", _NOT_A_FOLDER) from exc
    except OSError as exc:
        raise io_error(f"opening disk tier folder {path}", path, exc) from exc
    try:
        _check_writable(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_writable(fd: int, path: str) -> None:
    if os.statvfs(fd).f_flag & os.ST_RDONLY:
        raise io_error(f"opening disk tier folder {path}", path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    if not os.access(path, os.W_OK | os.X_OK):
        raise io_error(f"opening disk tier folder {path}", path, OSError(errno.EACCES, os.strerror(errno.EACCES)),
                       ": this process may not create files in it")
