"""The raw ceiling: the same block ops as plain Python file I/O, plus page-cache control.

Raw writes are open/write/optional fsync/close of the payload bytes, one file per block, named
by the block hash; raw reads are open/readinto a preallocated buffer/close. No header, no
checksum, no rename: the cheapest way Python can move those bytes through the filesystem.

The files sit in the tier's own fan-out folders (`ab/<hex>.raw`), beside its objects: the same
folders, so the same directory sizes and the same disk region. NOTE: in a sibling folder an
A/A run (`--calibrate`) once measured one side 1.48x the other, a placement effect of this
virtual disk, not of the code.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from kvtier.bench.workload import BlockOp
from kvtier.errors import TierIOError
from kvtier.tiers.disk.names import FANOUT_DIRS
from kvtier.tiers.format.codecs import tensor_bytes

RAW_SUFFIX = ".raw"


def fanout_path(folder: str, block_hash: bytes, suffix: str) -> str:
    """`FOLDER/ab/abcd...SUFFIX`: a block's file in a tier's fan-out (string ops only: this is per op)."""
    digest = block_hash.hex()
    return f"{folder}/{digest[:2]}/{digest}{suffix}"


class RawFiles:
    """Block ops on headerless files in `folder`'s fan-out; a read of a missing file raises TierIOError."""

    def __init__(self, folder: Path, pool: list[torch.Tensor], *, fsync: bool, suffix: str = RAW_SUFFIX) -> None:
        self.folder = str(folder)
        self.fsync = fsync
        self.suffix = suffix
        self._payloads = [tensor_bytes(t) for t in pool]
        self._block_bytes = len(self._payloads[0])
        self._local = threading.local()
        make_fanout(self.folder)

    def _buffer(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(self._block_bytes))
        return buf

    def path(self, op: BlockOp) -> str:
        return fanout_path(self.folder, op.key.block_hash, self.suffix)

    def remove_all(self) -> int:
        """Delete every file this side wrote (for --keep, which leaves only the tier's objects)."""
        removed = 0
        for root, _dirs, files in os.walk(self.folder):
            for name in files:
                if name.endswith(self.suffix):
                    os.unlink(os.path.join(root, name))
                    removed += 1
        return removed

    def run(self, op: BlockOp) -> bool:
        """Do one op; True when it moved the block (a raw read never misses on purpose)."""
        if op.kind == "write":
            self.write(op)
        else:
            self.read(op)
        return True

    def write(self, op: BlockOp) -> None:
        write_file(self.path(op), self._payloads[op.data_index], self.fsync)

    def read(self, op: BlockOp) -> None:
        buf = self._buffer()
        try:
            got = read_file_into(self.path(op), buf)
        except FileNotFoundError as exc:
            raise TierIOError(f"raw ceiling: block file {self.path(op)} is missing; "
                              "the folder was changed during the run") from exc
        if got != len(buf):
            raise TierIOError(f"raw ceiling: {self.path(op)} has {got} bytes, expected {len(buf)}")


def make_fanout(folder: str) -> None:
    """The 256 fan-out folders of a tier's layout under `folder` (the raw side's files sit beside the tier's)."""
    for name in FANOUT_DIRS:
        os.makedirs(os.path.join(folder, name), exist_ok=True)


def write_file(path: str, payload: memoryview, fsync: bool) -> None:
    """open, write all, optional fsync, close: the cheapest durable write Python has."""
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < len(payload):
            written += f.write(payload[written:])
        if fsync:
            os.fsync(f.fileno())


def read_file_into(path: str, buf: memoryview) -> int:
    """open, readinto until `buf` is full or the file ends, close; the bytes read."""
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:
                break
            got += n
    return got


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
