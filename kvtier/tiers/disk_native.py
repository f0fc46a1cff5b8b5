"""How a DiskStore moves its objects: one compiled call per write or read (`_fileio.c`), or the
Python twins.

A Python write gives the GIL up at each of its five syscalls (open, writev, fsync, link, close)
and waits behind the other threads' Python to win it back each time. With 4 writer threads on
2 cores that waiting, not the disk, held 256 KiB puts at 0.89 of the raw ceiling; the compiled
routine gives the GIL up once per put and measured 1.00 (storage bench, 6 alternating pairs).
Reads gain the same way, less (open + readv: 0.92 -> 0.97 in the mixed phase, 5 pairs). Both
together against both twins, 5 alternating pairs: writes 0.89 -> 1.02, reads 0.90 -> 0.96.

The extension is built at install where a C compiler is present (setup.py marks it optional);
without it, or with `DiskTierConfig(native_io=False)`, the Python twins do the same syscalls in
the same order: `disk_tmpfile.publish_unnamed`, `disk_io.write_object` and the open/readv of
`disk_read.read_block`. Verification (checksums, header) is Python either way.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from kvtier.tiers.disk_io import write_object
from kvtier.tiers.disk_read import Reader
from kvtier.tiers.disk_tmpfile import Linker, links_through_proc, publish_unnamed
from kvtier.tiers.format import BufferLike

try:
    from kvtier.tiers import _fileio
except ImportError:  # NOTE: not built: no C compiler at install time, or not Linux
    _fileio = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# (final path, a maker of a temporary name beside it, parts, fsync); raises OSError, leaves nothing
Publisher = Callable[[str, Callable[[], str], Sequence[BufferLike], bool], None]


def reader(native: bool) -> Reader | None:
    """The compiled open + readv + close for a store's reads, or None (read with Python)."""
    return _fileio.read_into if _compiled(native) else None


def native_built() -> bool:
    """Whether the compiled routines (kvtier.tiers._fileio) are importable."""
    return _fileio is not None


def choose_publisher(linker: Linker | None, native: bool) -> Publisher:
    """The write routine for a store: O_TMPFILE + link when `linker`, else a temporary name + rename.

    `native` asks for the compiled routine; without it built, this logs once and uses Python.
    """
    if not _compiled(native):
        return _python_renamed if linker is None else functools.partial(publish_unnamed, link=linker)
    return _native_renamed if linker is None else functools.partial(_native_unnamed, links_through_proc(linker),
                                                                      linker)


def _python_renamed(final_path: str, temp_path: Callable[[], str], parts: Sequence[BufferLike], fsync: bool) -> None:
    write_object(final_path, temp_path(), parts, fsync)


def _native_renamed(final_path: str, temp_path: Callable[[], str], parts: Sequence[BufferLike], fsync: bool) -> None:
    _fileio.write_renamed(temp_path(), final_path, parts, fsync)


def _native_unnamed(via_proc: bool, linker: Linker, final_path: str, temp_path: Callable[[], str],
                    parts: Sequence[BufferLike], fsync: bool) -> None:
    try:
        _fileio.publish_unnamed(final_path, parts, fsync, via_proc)
    except FileExistsError:  # a leftover the index did not know: the twin replaces it atomically
        publish_unnamed(final_path, temp_path, parts, fsync, linker)


def _compiled(native: bool) -> bool:
    """Whether to use the compiled routines: asked for and built (logs once when asked for but not built)."""
    if native and _fileio is None:
        _log_not_built()
    return native and _fileio is not None


@functools.cache
def _log_not_built() -> None:
    logger.info("kvtier.tiers._fileio is not built (no C compiler at install?); disk tiers read and write with "
                "the Python twins, about 0.1 further from raw file I/O at 256 KiB blocks under concurrency; "
                "reinstall with a C compiler (gcc) to build it")
