"""How a disk tier moves its objects: the compiled `_fileio` where it is built, else its Python twin.

Both modules offer the same calls with the same signatures and system calls (`publish_unnamed`,
`write_renamed`, `read_into`, `read_many_into`, `read_many_known`); a store chooses one module once and
calls its names. Headers are built and parsed in Python either way; `read_many_known` only compares
bytes at offsets its caller names.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol, cast

from kvtier.tiers.disk import pyfileio
from kvtier.tiers.format import BufferLike

try:
    from kvtier.tiers.disk import _fileio
except ImportError:  # NOTE: not built: no C compiler at install time, or not Linux
    _fileio = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class FileIO(Protocol):
    """The calls `_fileio` and `pyfileio` both provide (see pyfileio for what each does)."""

    def publish_unnamed(self, root_fd: int, fanout: str, name: str, parts: Sequence[BufferLike], fsync: bool,
                        via_proc: bool, mode: int, direct: bool = False) -> None: ...

    def write_renamed(self, root_fd: int, fanout: str, temp_name: str, name: str, parts: Sequence[BufferLike],
                      fsync: bool, mode: int, direct: bool = False) -> None: ...

    def read_into(self, root_fd: int, fanout: str, name: str, parts: Sequence[memoryview],
                  want: int, direct: bool = False) -> tuple[int, int | None, int]: ...

    def read_many_into(self, root_fd: int, requests: Sequence[tuple[str, str, Sequence[memoryview], int, int]],
                       direct: bool = False) -> list[tuple[tuple[int, int | None, int], int | None] | OSError]: ...

    def read_many_known(self, root_fd: int,
                        requests: Sequence[tuple[str, str, Sequence[memoryview], int, int, int,
                                                 tuple[tuple[int, bytes], ...]]],
                        direct: bool = False) -> list[bool | tuple[int, int | None, int] | OSError]: ...


def native_built() -> bool:
    """Whether the compiled routines (kvtier.tiers.disk._fileio) are importable."""
    return _fileio is not None


def routines(native: bool) -> FileIO:
    """The compiled module when `native` asks for it and it is built, else the Python twin
    (logging once when asked for but not built)."""
    if native and _fileio is None:
        _log_not_built()
    module: ModuleType = _fileio if native and _fileio is not None else pyfileio
    return cast(FileIO, module)


@functools.cache
def _log_not_built() -> None:
    logger.info("kvtier.tiers.disk._fileio is not built (no C compiler at install?); disk tiers read and write "
                "with the Python twin, which is slower under concurrency; reinstall with a C compiler (gcc) "
                "to build it")
