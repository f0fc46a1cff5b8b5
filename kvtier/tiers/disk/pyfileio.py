"""The Python twin of `_fileio.c`: one object's write or read, with the same names, signatures and
system calls in the same order, and nothing left behind on any failure.

Every call enters the fan-out folder `fanout` of the tier whose root descriptor is `root_fd` with
O_NOFOLLOW (ENOTDIR when it is a link or a file), and opens objects with O_NOFOLLOW too; reads
open with O_NONBLOCK and check that the file is a regular one before reading it.

With `direct`, objects are opened with O_DIRECT (tiers/disk/direct.py): a part whose memory is not
aligned to DIRECT_ALIGN moves through an aligned stand-in, and an object whose parts are not all
whole multiples of it moves as one stand-in rounded up (a write then truncates the file back).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import mmap
import os
import stat
from collections.abc import Sequence

import xxhash

from kvtier.tiers.disk.folder import O_CLOEXEC, SUBDIR_FLAGS
from kvtier.tiers.format import BufferLike

O_TMPFILE = getattr(os, "O_TMPFILE", 0)
AT_EMPTY_PATH = 0x1000
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers one readv/writev may take
O_DIRECT = getattr(os, "O_DIRECT", 0)
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | O_CLOEXEC  # NOTE: a FIFO must never block a read
DIRECT_ALIGN = 4096  # O_DIRECT: addresses, lengths and offsets in whole logical blocks; 4096 covers every disk


# NOTE on durability: with `fsync` the data reaches the disk before the object gets its name, so
# a crash can lose the newest objects but never publish a torn one. The folder is not fsynced
# after each publish: a name lost in a crash is only a miss for a cache, and a second journal
# commit per put would cost more than the write. Without `fsync` a crash may leave a damaged
# object under its name; reads verify every object, so that too is only a miss.


def publish_unnamed(root_fd: int, fanout: str, name: str, parts: Sequence[BufferLike], fsync: bool,
                    via_proc: bool, mode: int, direct: bool = False) -> None:
    """Write `parts` to an O_TMPFILE inode in the fan-out folder, fsync it if asked, and link it at
    `name`: linkat(fd, "", AT_EMPTY_PATH), or through /proc/self/fd/N when `via_proc`.

    Raises OSError with nothing left behind (the kernel frees the unnamed inode); FileExistsError
    when `name` exists, which the caller resolves (write_renamed replaces it atomically). With
    `direct`, the inode is written with O_DIRECT.
    """
    dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=root_fd)
    try:
        fd = os.open(".", O_TMPFILE | os.O_WRONLY | O_CLOEXEC | (O_DIRECT if direct else 0), mode, dir_fd=dir_fd)
        try:
            write_all(fd, parts, direct)
            if fsync:
                os.fsync(fd)
            if via_proc:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            else:
                _link_empty_path(fd, dir_fd, name)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def write_renamed(root_fd: int, fanout: str, temp_name: str, name: str, parts: Sequence[BufferLike], fsync: bool,
                  mode: int, direct: bool = False) -> None:
    """Create `temp_name` (O_EXCL) in the fan-out folder, write `parts`, fsync if asked, close, and
    rename it onto `name` (atomic). Raises OSError with the temporary file removed. With `direct`,
    the file is written with O_DIRECT."""
    dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=root_fd)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | O_CLOEXEC | (O_DIRECT if direct else 0)
        fd = os.open(temp_name, flags, mode, dir_fd=dir_fd)
        try:
            try:
                write_all(fd, parts, direct)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # NOTE: NFS reports write-back errors here
            os.rename(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def read_into(root_fd: int, fanout: str, name: str, parts: Sequence[memoryview],
              want: int, direct: bool = False) -> tuple[int, int | None, int]:
    """Open `name` in the fan-out folder and, if it is a regular file of exactly `want` bytes, fill
    `parts` in order from it.

    Returns `(bytes read, file size or None when it is not a regular file, inode)`; nothing is
    read unless the size is `want`. Raises OSError (FileNotFoundError when absent, ELOOP for a link).
    With `direct`, a file that O_DIRECT can open is read with it.
    """
    dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=root_fd)
    try:
        fd = _open_direct(name, dir_fd) if direct else -1
        direct = fd >= 0
        if not direct:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return 0, None, st.st_ino
        if st.st_size != want:
            return 0, st.st_size, st.st_ino
        return (_read_direct(fd, parts, want) if direct else read_exact_into(fd, parts, want)), st.st_size, st.st_ino
    finally:
        os.close(fd)


def _open_direct(name: str, dir_fd: int) -> int:
    """`name` opened for reading with O_DIRECT, or -1 where O_DIRECT cannot open it (EINVAL: a FIFO, a folder)."""
    try:
        return os.open(name, READ_FLAGS | O_DIRECT, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return -1


def write_all(fd: int, parts: Sequence[BufferLike], direct: bool = False) -> None:
    """Write every byte of `parts`, in order, with as few `writev` calls as the kernel allows (to a
    file opened with O_DIRECT when `direct`: through aligned stand-ins, see the module docstring)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    if not direct:
        _write_views(fd, views)
        return
    stand_ins, whole = _stand_ins(views, writing=True)
    _write_views(fd, stand_ins)
    total = sum(v.nbytes for v in views)
    if whole and total % DIRECT_ALIGN:
        os.ftruncate(fd, total)


def _write_views(fd: int, views: list[memoryview]) -> None:
    while views:
        written = os.writev(fd, views[:IOV_MAX])
        if written == 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        _consume(views, written)


def _read_direct(fd: int, parts: Sequence[memoryview], want: int) -> int:
    """read_exact_into a file opened with O_DIRECT, through aligned stand-ins (see the module docstring)."""
    views = [memoryview(p).cast("B") for p in parts if p.nbytes]
    stand_ins, whole = _stand_ins(views, writing=False)
    got = read_exact_into(fd, list(stand_ins), want)
    if whole:  # the one stand-in, cut at the views' lengths
        offsets = list(itertools.accumulate((v.nbytes for v in views), initial=0))
        stand_ins = [stand_ins[0][start:end] for start, end in itertools.pairwise(offsets)]
    at = 0
    for view, stand_in in zip(views, stand_ins):
        if stand_in is not view:
            count = max(0, min(view.nbytes, got - at))
            view[:count] = stand_in[:count]
        at += view.nbytes
    return got


def _stand_ins(views: list[memoryview], writing: bool) -> tuple[list[memoryview], bool]:
    """What an O_DIRECT transfer of `views` moves: each view itself, or an aligned stand-in where its
    memory is not aligned; or, when some length is not a whole multiple of DIRECT_ALIGN, one stand-in
    for the whole object rounded up (True). A write's stand-ins hold the views' bytes."""
    if any(v.nbytes % DIRECT_ALIGN for v in views):
        size = _round_up(sum(v.nbytes for v in views))
        bounce = memoryview(mmap.mmap(-1, max(size, DIRECT_ALIGN)))[:size]  # NOTE: anonymous maps are page-aligned
        at = 0
        for view in views if writing else ():  # NOTE: the rest of the map is zeros already
            bounce[at:at + view.nbytes] = view
            at += view.nbytes
        return [bounce], True
    stand_ins = []
    for view in views:
        if _aligned(view):
            stand_ins.append(view)
            continue
        stand_in = memoryview(mmap.mmap(-1, view.nbytes))
        if writing:
            stand_in[:] = view
        stand_ins.append(stand_in)
    return stand_ins, False


def _round_up(nbytes: int) -> int:
    return -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN


def _aligned(view: memoryview) -> bool:
    """Whether `view`'s memory starts at a multiple of DIRECT_ALIGN (a read-only one counts as not)."""
    if view.readonly:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0


ReadManyResult = tuple[tuple[int, int | None, int], int | None] | OSError


def read_many_into(root_fd: int, requests: Sequence[tuple[str, str, Sequence[memoryview], int, int]],
                   direct: bool = False) -> list[ReadManyResult]:
    """`read_into` for each `(fanout, name, parts, want, checksum_from)` of `requests`, in order: each
    result is what it returns with the xxh3_64 of the bytes read into `parts` from byte
    `checksum_from` on (None unless all `want` bytes were read), or the OSError it raises."""
    if any(len(request) != 5 for request in requests):  # NOTE: the TypeError the compiled twin's parsing raises
        raise TypeError("read_many_into requests must be (fanout, name, parts, want, checksum_from) tuples")
    results: list[ReadManyResult] = []
    for fanout, name, parts, want, checksum_from in requests:
        try:
            read = read_into(root_fd, fanout, name, parts, want, direct)
        except OSError as exc:
            results.append(exc)
            continue
        results.append((read, _parts_checksum(parts, checksum_from) if read[0] == want else None))
    return results


ReadKnownResult = bool | tuple[int, int | None, int] | OSError


def read_many_known(root_fd: int, requests: Sequence[tuple[str, str, Sequence[memoryview], int, int, int,
                                                          tuple[tuple[int, bytes], ...]]],
                    direct: bool = False) -> list[ReadKnownResult]:
    """`read_into` for each `(fanout, name, parts, want, known, checksum_at, expect)` of `requests`, in
    order, for objects whose header the caller knows by its checksum: True when all `want` bytes were
    read and the header (`parts[0]`) ends with the u64 `known` that is the xxh3_64 of the rest of it,
    holds each `(offset, bytes)` of `expect`, and has at `checksum_at` the xxh3_64 of the payload
    (`parts[1:]`), all little-endian; else what read_into returns, or the OSError it raises."""
    for request in requests:  # NOTE: the errors the compiled twin's parsing raises
        if len(request) != 7:
            raise TypeError("read_many_known requests must be (fanout, name, parts, want, known, checksum_at, "
                            "expect) tuples")
        expect = request[6]
        if not isinstance(expect, tuple) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], int)
                                                    and isinstance(p[1], bytes) for p in expect):
            raise TypeError("expect must be a tuple of (offset, bytes) pairs")
        if len(expect) > MAX_EXPECT:
            raise ValueError(f"expect names at most {MAX_EXPECT} pieces")
    results: list[ReadKnownResult] = []
    for fanout, name, parts, want, known, checksum_at, expect in requests:
        try:
            read = read_into(root_fd, fanout, name, parts, want, direct)
        except OSError as exc:
            results.append(exc)
            continue
        results.append(True if _known_read_holds(read, parts, want, known, checksum_at, expect) else read)
    return results


MAX_EXPECT = 8  # (offset, bytes) pieces a read_many_known request may name


def _known_read_holds(read: tuple[int, int | None, int], parts: Sequence[memoryview], want: int, known: int,
                      checksum_at: int, expect: tuple[tuple[int, bytes], ...]) -> bool:
    """read_many_known's check of one read (see there)."""
    got, size, _ = read
    if got != want or size is None or not parts:
        return False
    header = memoryview(parts[0]).cast("B")
    length = header.nbytes
    if length < 16 or not 0 <= checksum_at <= length - 16:
        return False
    if int.from_bytes(header[-8:], "little") != known or xxhash.xxh3_64_intdigest(header[:-8]) != known:
        return False
    if any(at < 0 or at > length or len(piece) > length - at or header[at:at + len(piece)] != piece
           for at, piece in expect):
        return False
    return int.from_bytes(header[checksum_at:checksum_at + 8], "little") == _parts_checksum(parts, length)


def _parts_checksum(parts: Sequence[memoryview], skip: int) -> int:
    """xxh3_64 of the bytes of `parts` after the first `skip` (the payload after its header)."""
    state = xxhash.xxh3_64()
    for part in parts:
        view = memoryview(part).cast("B")
        state.update(view[min(skip, view.nbytes):])
        skip = max(0, skip - view.nbytes)
    return int(state.intdigest())


def read_exact_into(fd: int, targets: Sequence[memoryview], want: int) -> int:
    """Fill `targets` in order from `fd` until `want` bytes or the end of the file; the bytes read."""
    views = [t for t in targets if t.nbytes]
    total = 0
    while views and total < want:
        got = os.readv(fd, views[:IOV_MAX])
        if got == 0:
            break
        total += got
        _consume(views, got)
    return total


def _consume(views: list[memoryview], count: int) -> None:
    """Drop `count` bytes from the front of `views` (after a short readv/writev)."""
    while views and count >= views[0].nbytes:
        count -= views[0].nbytes
        views.pop(0)
    if views and count:
        views[0] = views[0][count:]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _link_empty_path(fd: int, dir_fd: int, name: str) -> None:
    if _libc().linkat(fd, b"", dir_fd, os.fsencode(name), AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)
