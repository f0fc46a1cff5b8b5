"""Read one block object and verify it completely before anything is handed out.

Fast path (a known key, raw codec, the size the layout predicts): one `readv` straight into the
header buffer, the caller's output tensor and a one-byte probe that catches a longer file, then
a comparison with the header this kvtier would write for the key and the payload checksum; no
copy, no `fstat`, no parsing. Anything else (zstd, another size, a scan without a key) reads the
whole file and goes through `decode_block`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk_io import O_CLOEXEC, inode_of, read_exact_into, read_whole
from kvtier.tiers.format import (
    BlockHeader,
    check_identity,
    checksum_pieces,
    decode_block,
    header_bytes_for,
    pieces_checksum,
    stored_header_checksum,
    verify_raw_header,
)
from kvtier.tiers.format_codecs import tensor_bytes

_local = threading.local()  # per thread: the landing of the last output tensor (see _landing)
_PROBE = memoryview(bytearray(1))  # catches a file longer than expected; its byte is never read


class DamagedObjectError(FormatError):
    """The object read at a path failed verification; `inode` names that very file (or is None)."""

    def __init__(self, message: str, inode: int | None) -> None:
        super().__init__(message)
        self.inode = inode


@dataclass(frozen=True, slots=True)
class ReadResult:
    key: BlockKey  # as stored in the header
    data: torch.Tensor  # [num_layers, 2, num_kv_heads, block_size, head_dim]
    size: int  # bytes of the object file
    header_checksum: int | None = None  # of the verified header, for `known_header` next time (fast path only)


# (path, writable parts, bytes wanted) -> (bytes read, inode of the file read); disk_native.reader()
Reader = Callable[[str, Sequence[memoryview], int], tuple[int, int]]


def read_block(path: str, key: BlockKey | None, layout: KVLayout, out: torch.Tensor | None = None,
               close: Callable[[int], None] = os.close, known_header: int | None = None,
               read_into: Reader | None = None) -> ReadResult:
    """The verified block stored at `path` (into `out` when given; `out` is undefined on failure).

    With `key` None (a block found by scanning), the identity is taken from the header and
    only the layout is checked. `close` closes the file (local tiers pass close_holding_gil).
    `known_header`: the header checksum the caller wrote or verified before for `key` (see
    verify_raw_header); it only makes the check cheaper. `read_into`: the compiled open + readv
    + close for the fast path (disk_native.reader); None reads with Python.

    Raises:
        FileNotFoundError: no object at `path`.
        OSError: the read failed.
        DamagedObjectError: the object is corrupt, truncated, foreign or of another key or layout.
    """
    if key is not None and read_into is not None:
        landing = _landing(out, layout, header_bytes_for(len(key.token_ids)))
        size = landing.object_bytes
        got, inode = read_into(path, landing.parts, size)
        if got == size:
            try:
                header_checksum = _verify_landing(landing, key, layout, known_header)
            except FormatError as exc:
                raise DamagedObjectError(str(exc), inode) from exc
            return _delivered(ReadResult(key, landing.tensor, size, header_checksum), out)
        # another size: another codec, or damage; the general path below decides
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        if key is not None and read_into is None \
                and (fast := _read_raw_into(fd, key, layout, out, known_header)) is not None:
            result = ReadResult(key, *fast)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            header, data = _read_any(fd, os.fstat(fd).st_size, key, layout)
            result = ReadResult(header.key, data, header.object_bytes)
    except FormatError as exc:
        raise DamagedObjectError(str(exc), inode_of(fd)) from exc
    finally:
        close(fd)
    return _delivered(result, out)


def _delivered(result: ReadResult, out: torch.Tensor | None) -> ReadResult:
    """`result` with its block in `out` when one was given (a copy unless it landed there)."""
    if out is not None and result.data.data_ptr() != out.data_ptr():
        out.copy_(result.data)
        return ReadResult(result.key, out, result.size, result.header_checksum)
    return result


def _read_raw_into(fd: int, key: BlockKey, layout: KVLayout, out: torch.Tensor | None,
                   known_header: int | None) -> tuple[torch.Tensor, int, int] | None:
    """`(block, object bytes, header checksum)` if the file has exactly a raw block's size; else
    None (nothing decided)."""
    landing = _landing(out, layout, header_bytes_for(len(key.token_ids)))
    parts, size = landing.parts, landing.object_bytes
    got = os.readv(fd, parts)
    if got < size:  # NOTE: a regular file reads short only at its end, or very rarely on a signal
        os.lseek(fd, 0, os.SEEK_SET)
        got = read_exact_into(fd, parts)
    if got != size:  # shorter or longer: another codec, or damage
        return None
    return landing.tensor, size, _verify_landing(landing, key, layout, known_header)


def _verify_landing(landing: _Landing, key: BlockKey, layout: KVLayout, known_header: int | None) -> int:
    """The header checksum of the raw object that landed, once header and payload are verified."""
    if pieces_checksum(landing.pieces) != verify_raw_header(landing.header, key, layout, known_header):
        raise FormatError("payload checksum mismatch: the payload is corrupt")
    return stored_header_checksum(landing.header)


def _read_any(fd: int, size: int, key: BlockKey | None, layout: KVLayout) -> tuple[BlockHeader, torch.Tensor]:
    buf = read_whole(fd, size)
    if buf.nbytes != size:
        raise FormatError(f"object shrank while being read: {buf.nbytes} of {size} bytes")
    header, data = decode_block(buf, key, layout)
    _check_full_block(header, key, layout)
    return header, data


def _check_full_block(header: BlockHeader, key: BlockKey | None, layout: KVLayout) -> None:
    check_identity(header, key, layout)
    if (header.head_start, header.head_end) != (0, layout.num_kv_heads):
        raise FormatError(f"object holds KV heads [{header.head_start}, {header.head_end}), "
                          f"this tier serves whole blocks of {layout.num_kv_heads} heads")


@dataclass(slots=True)
class _Landing:
    """Where the fast path reads a block: header buffer, payload bytes, checksum pieces, probe."""

    tensor: torch.Tensor
    data_ptr: int
    header: bytearray
    parts: list[memoryview]  # [header, payload, probe]: one readv
    pieces: list[memoryview]  # the payload as payload_checksum cuts it
    object_bytes: int  # header + payload: the size of the raw object that fits exactly


def _landing(out: torch.Tensor | None, layout: KVLayout, header_len: int) -> _Landing:
    """`out` itself when it is a contiguous CPU block, else a new tensor, and the buffers around it.

    The landing of the last `out` is kept per thread, since callers reuse one output buffer: a
    warm 256 KiB get went from 66.6 to 60.0 us (old and new alternating in one process; a raw
    read took 37.6), and it counts more under load, where every thread waits for the others'
    Python after each system call.
    """
    direct = out is not None and out.is_cpu and out.is_contiguous() and out.shape == layout.block_shape \
        and out.dtype == layout.dtype
    if direct:
        cached: _Landing | None = getattr(_local, "landing", None)
        if cached is not None and cached.tensor is out and cached.data_ptr == out.data_ptr() \
                and len(cached.header) == header_len:
            return cached
    target = out if direct and out is not None else torch.empty(layout.block_shape, dtype=layout.dtype)
    payload = tensor_bytes(target)
    header = bytearray(header_len)
    landing = _Landing(target, target.data_ptr(), header, [memoryview(header), payload, _PROBE],
                       checksum_pieces(payload), header_len + payload.nbytes)
    if direct:
        _local.landing = landing
    return landing
