"""Read one block object and verify it completely before anything is handed out.

Fast path (raw codec, the size the key and layout predict): one `readv` straight into the
header buffer, the caller's output tensor and a one-byte probe that catches a longer file, then
checksums over those bytes; no copy and no `fstat`. Anything else (zstd, another size) reads the
whole file and goes through `decode_block`.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk_io import O_CLOEXEC, read_exact_into, read_whole
from kvtier.tiers.format import (
    BlockHeader,
    check_identity,
    decode_block,
    decode_header,
    header_bytes_for,
    payload_checksum,
)
from kvtier.tiers.format_codecs import tensor_bytes

_local = threading.local()  # per thread: the last output tensor and its byte view


@dataclass(frozen=True, slots=True)
class ReadResult:
    key: BlockKey  # as stored in the header
    data: torch.Tensor  # [num_layers, 2, num_kv_heads, block_size, head_dim]
    size: int  # bytes of the object file


def read_block(path: str, key: BlockKey | None, layout: KVLayout, out: torch.Tensor | None = None) -> ReadResult:
    """The verified block stored at `path` (into `out` when given; `out` is undefined on failure).

    With `key` None (a block found by scanning), the identity is taken from the header and
    only the layout is checked.

    Raises:
        FileNotFoundError: no object at `path`.
        OSError: the read failed.
        FormatError: the object is corrupt, truncated, foreign or of another key or layout.
    """
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        fast = _read_raw_into(fd, key, layout, out) if key is not None else None
        if fast is not None:
            header, data = fast
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            header, data = _read_any(fd, os.fstat(fd).st_size, key, layout)
    finally:
        os.close(fd)
    if out is not None and data.data_ptr() != out.data_ptr():
        out.copy_(data)
        data = out
    return ReadResult(header.key, data, header.object_bytes)


def _read_raw_into(fd: int, key: BlockKey, layout: KVLayout,
                   out: torch.Tensor | None) -> tuple[BlockHeader, torch.Tensor] | None:
    """The block if the file has exactly the raw size for `key`; None (nothing decided) otherwise."""
    header_buf = bytearray(header_bytes_for(len(key.token_ids)))
    target = out if _is_direct_target(out, layout) else torch.empty(layout.block_shape, dtype=layout.dtype)
    assert target is not None, "_is_direct_target accepted None"
    payload = _bytes_of(target)
    got = read_exact_into(fd, [memoryview(header_buf), payload, memoryview(bytearray(1))])
    if got != len(header_buf) + payload.nbytes:  # shorter or longer: another codec, or damage
        return None
    header = decode_header(header_buf)
    _check_full_block(header, key, layout)
    if header.codec != "raw":
        raise FormatError(f"object of {header.codec!r} codec has the size of a raw one")
    if payload_checksum(payload) != header.payload_checksum:
        raise FormatError("payload checksum mismatch: the payload is corrupt")
    return header, target


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


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor, remembered for the buffer a caller reuses."""
    cached = getattr(_local, "view", None)
    if cached is not None and cached[0] is tensor and cached[1] == tensor.data_ptr():
        return cached[2]  # type: ignore[no-any-return]
    view = tensor_bytes(tensor)
    _local.view = (tensor, tensor.data_ptr(), view)
    return view


def _is_direct_target(out: torch.Tensor | None, layout: KVLayout) -> bool:
    return (out is not None and out.device.type == "cpu" and out.is_contiguous()
            and tuple(out.shape) == layout.block_shape and out.dtype == layout.dtype)
