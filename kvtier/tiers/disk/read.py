"""Read one block object and verify it completely before anything is handed out.

Fast path (a known key, raw codec, a file of exactly the size the layout predicts): one
`read_into` straight into the header buffer and the caller's output tensor, then a comparison
with the header this kvtier would write for the key, and the payload checksum; no copy, no
parsing. Anything else (zstd, another size, a scan without a key) parses the header first and
reads only the object it announces, bounded by the largest object the layout allows.

`direct`: the store's O_DIRECT mode (tiers/disk/direct.py); its objects have page-aligned headers,
so the fast path expects those and reads with O_DIRECT, and the general path reads either kind.
"""
from __future__ import annotations

import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import TypeGuard

import torch

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.disk.fileio import FileIO
from kvtier.tiers.disk.folder import SUBDIR_FLAGS
from kvtier.tiers.disk.pyfileio import READ_FLAGS
from kvtier.tiers.format import (
    FIXED_HEADER_BYTES,
    checksum_pieces,
    decode_header,
    header_bytes_for,
    header_length,
    max_object_bytes,
    num_segments,
    pieces_checksum,
    stored_header_checksum,
    verify_object,
    verify_raw_header,
)
from kvtier.tiers.format.codecs import StorageViews, tensor_bytes
from kvtier.tiers.format.header import NAMESPACE_AT, NUM_TOKENS_AT, PAYLOAD_CHECKSUM_AT, U32, tokens_struct

_local = threading.local()  # per thread: the landing of the last output tensor (see _landing)
_NOT_REGULAR = "not a regular file (a FIFO, device or folder at an object's name)"


class DamagedObjectError(FormatError):
    """What is at an object's name is not that object; `inode` names the very file read (or None).

    `keep` is False for what no writer could have meant as an object (not a regular file, or
    larger than any object): a shared tier removes those instead of quarantining them.
    """

    def __init__(self, message: str, inode: int | None, keep: bool = True) -> None:
        super().__init__(message)
        self.inode = inode
        self.keep = keep


@dataclass(frozen=True, slots=True)
class ReadResult:
    key: BlockKey  # as stored in the header
    data: torch.Tensor  # [num_layers, 2, num_kv_heads, block_size, head_dim]
    size: int  # bytes of the object file
    header_checksum: int | None = None  # of the verified header, for `known_header` next time (fast path only)


def read_block(io: FileIO, root_fd: int, fanout: str, name: str, key: BlockKey | None, layout: KVLayout,
               out: torch.Tensor | None = None, known_header: int | None = None, direct: bool = False) -> ReadResult:
    """The verified block stored at `fanout/name` of the tier at `root_fd` (into `out` when given;
    `out` is undefined on failure).

    With `key` None (a block found by scanning), the identity is taken from the header and only
    the layout is checked. `known_header`: the header checksum the caller wrote or verified
    before for `key` (see verify_raw_header); it only makes the check cheaper.

    Raises:
        FileNotFoundError: no object at the name.
        OSError: the read failed (ELOOP: a link at the name; ENOTDIR: a linked fan-out folder).
        DamagedObjectError: not a regular file, or corrupt, truncated, oversized, foreign, or of
            another key or layout.
    """
    if key is not None:
        landing = _landing(out, layout, header_bytes_for(len(key.token_ids), num_segments(layout), direct))
        got, size, inode = io.read_into(root_fd, fanout, name, landing.parts, landing.object_bytes, direct)
        return _landed(root_fd, fanout, name, key, layout, out, known_header, landing, got, size, inode, direct)
    return _delivered(_read_parsed(root_fd, fanout, name, key, layout), out)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One object of a batch read: where it is, the key it must hold, and where its block goes."""

    fanout: str
    name: str
    key: BlockKey
    out: torch.Tensor | None = None
    known_header: int | None = None


def read_blocks(io: FileIO, root_fd: int, requests: list[ReadRequest], layout: KVLayout,
                direct: bool = False) -> list[ReadResult | OSError | DamagedObjectError]:
    """`read_block` of every request, with the files read and their payloads checksummed in one
    `read_many_into` call (the GIL given up once for the batch instead of at every system call, and
    each checksum taken while the payload is still in the core's cache), then each verified in
    turn. Each result is what read_block returns, or the OSError or DamagedObjectError it raises.

    Requests with a `known_header` are read with `read_many_known`, which also compares the header
    with the one the store verified before, so a good object costs no Python check of its own
    (at small objects the Python of those checks cost more than the read itself).
    """
    results: list[ReadResult | OSError | DamagedObjectError | None] = [None] * len(requests)
    known = [i for i, r in enumerate(requests) if r.known_header is not None]
    if known:
        for i, result in zip(known, _read_known(io, root_fd, [requests[i] for i in known], layout, direct)):
            results[i] = result
    if len(known) < len(requests):
        others = [i for i, r in enumerate(requests) if r.known_header is None]
        for i, result in zip(others, _read_unknown(io, root_fd, [requests[i] for i in others], layout, direct)):
            results[i] = result
    return results  # type: ignore[return-value]  # NOTE: every slot filled above


def _read_known(io: FileIO, root_fd: int, requests: list[ReadRequest], layout: KVLayout,
                direct: bool) -> list[ReadResult | OSError | DamagedObjectError]:
    """read_blocks of requests with a `known_header`: read into one header buffer per batch (a
    verified header is not needed again) and the output; anything read_many_known does not vouch
    for is read again by `read_block` without the remembered checksum, which says what is wrong."""
    segments = num_segments(layout)
    headers: dict[int, memoryview] = {}
    views = StorageViews()
    targets: list[torch.Tensor] = []
    calls: list[KnownCall] = []
    for r in requests:
        if r.known_header is None:
            raise ValueError("_read_known reads requests with a known_header only")
        num_tokens = len(r.key.token_ids)
        header_len = header_bytes_for(num_tokens, segments, direct)
        header = headers.get(header_len)
        if header is None:
            header = headers[header_len] = memoryview(bytearray(header_len))
        target, payload = _payload_views(r.out, layout, views)
        expect = key_pieces(r.key, header_len)
        targets.append(target)
        calls.append((r.fanout, r.name, (header, *payload), header_len + layout.page_size_bytes, r.known_header,
                      PAYLOAD_CHECKSUM_AT, expect))
    results: list[ReadResult | OSError | DamagedObjectError] = []
    for request, target, call, outcome in zip(requests, targets, calls, io.read_many_known(root_fd, calls, direct)):
        if outcome is True:
            result = ReadResult(request.key, target, call[3], request.known_header)
            results.append(result if target is request.out else _delivered(result, request.out))
        elif isinstance(outcome, OSError):
            results.append(outcome)
        elif isinstance(outcome, tuple) and outcome[1] is None:
            results.append(DamagedObjectError(_NOT_REGULAR, outcome[2], keep=False))
        else:
            try:
                results.append(read_block(io, root_fd, request.fanout, request.name, request.key, layout,
                                          request.out, direct=direct))
            except (OSError, DamagedObjectError) as exc:
                results.append(exc)
    return results


Pieces = tuple[tuple[int, bytes], ...]
KnownCall = tuple[str, str, tuple[memoryview, ...], int, int, int, Pieces]  # one object of read_many_known
MAX_OUT_RUNS = 64  # NOTE: a strided output of more runs is read into a new tensor and copied (iovecs per read)


def _payload_views(out: torch.Tensor | None, layout: KVLayout,
                   views: StorageViews) -> tuple[torch.Tensor, list[memoryview]]:
    """Where a raw payload lands, and its bytes as the read's parts: `out` itself when it is a CPU
    block, contiguous (one view) or strided in at most MAX_OUT_RUNS non-overlapping runs (a view per
    run); else a new tensor, copied into `out` once verified."""
    if out is not None and out.is_cpu and out.shape == layout.block_shape and out.dtype == layout.dtype:
        if out.is_contiguous():
            return out, [tensor_bytes(out)]
        runs = views.runs(out, MAX_OUT_RUNS)
        if runs is not None:
            return out, runs
    target = torch.empty(layout.block_shape, dtype=layout.dtype)
    return target, [tensor_bytes(target)]


def key_pieces(key: BlockKey, header_len: int) -> Pieces:
    """Where a raw header of `key` holds its namespace, block hash and token ids, as read_many_known's
    `expect`; for a key no object can hold, a piece no header holds, so read_block's check says why."""
    num_tokens = len(key.token_ids)
    identity = key.namespace + key.block_hash
    try:
        if len(key.namespace) == len(key.block_hash) == 32:
            return ((NAMESPACE_AT, identity), (NUM_TOKENS_AT, U32.pack(num_tokens)),
                    (FIXED_HEADER_BYTES, tokens_struct(num_tokens).pack(*key.token_ids)))
    except struct.error:  # token ids past 2**32
        pass
    return ((0, bytes(header_len + 1)),)


def _read_unknown(io: FileIO, root_fd: int, requests: list[ReadRequest], layout: KVLayout,
                  direct: bool) -> list[ReadResult | OSError | DamagedObjectError]:
    """read_blocks of requests without a `known_header`: read_many_into, then each header checked here."""
    segments = num_segments(layout)
    landings = [_landing(r.out, layout, header_bytes_for(len(r.key.token_ids), segments, direct), keep=False)
                for r in requests]
    outcomes = io.read_many_into(root_fd, [(r.fanout, r.name, landing.parts, landing.object_bytes, len(landing.header))
                                           for r, landing in zip(requests, landings)], direct)
    results: list[ReadResult | OSError | DamagedObjectError] = []
    for request, landing, outcome in zip(requests, landings, outcomes):
        if isinstance(outcome, OSError):
            results.append(outcome)
            continue
        (got, size, inode), checksum = outcome
        try:
            results.append(_landed(root_fd, request.fanout, request.name, request.key, layout, request.out,
                                   request.known_header, landing, got, size, inode, direct, checksum))
        except (OSError, DamagedObjectError) as exc:
            results.append(exc)
    return results


def _landed(root_fd: int, fanout: str, name: str, key: BlockKey, layout: KVLayout, out: torch.Tensor | None,
            known_header: int | None, landing: _Landing, got: int, size: int | None, inode: int, direct: bool,
            checksum: int | None = None) -> ReadResult:
    """The verified block of a fast-path read that filled `got` bytes of `landing` from a file of
    `size` bytes (None: not a regular file), `checksum` its payload's if the read took it; any
    other size goes through the general path."""
    if size is None:
        raise DamagedObjectError(_NOT_REGULAR, inode, keep=False)
    if got == landing.object_bytes:
        try:
            header_checksum = _verify_landing(landing, key, layout, known_header, direct, checksum)
        except FormatError as exc:
            raise DamagedObjectError(str(exc), inode) from exc
        return _delivered(ReadResult(key, landing.tensor, got, header_checksum), out)
    # another size: another codec, or damage; the general path decides
    return _delivered(_read_parsed(root_fd, fanout, name, key, layout), out)


def _read_parsed(root_fd: int, fanout: str, name: str, key: BlockKey | None, layout: KVLayout) -> ReadResult:
    """The general path: header first, then exactly the object it announces (never more than the
    largest object of `layout`)."""
    dir_fd = os.open(fanout, SUBDIR_FLAGS, dir_fd=root_fd)
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    inode = None
    try:
        st = os.fstat(fd)
        inode = st.st_ino
        if not stat.S_ISREG(st.st_mode):
            raise DamagedObjectError(_NOT_REGULAR, inode, keep=False)
        if st.st_size > max_object_bytes(layout):
            raise DamagedObjectError(f"file of {st.st_size} bytes is larger than any object of this layout can be",
                                     inode, keep=False)
        header = decode_header(os.pread(fd, header_length(os.pread(fd, FIXED_HEADER_BYTES, 0)), 0))
        if header.object_bytes != st.st_size:
            raise FormatError(f"object is {st.st_size} bytes, its header announces {header.object_bytes}")
        buf = tensor_bytes(torch.empty(st.st_size, dtype=torch.uint8))  # NOTE: no zero fill
        if os.preadv(fd, [buf], 0) != st.st_size:
            raise FormatError(f"object shrank while being read (below {st.st_size} bytes)")
        header, data = verify_object(buf, key, layout, header)
    except DamagedObjectError:
        raise
    except FormatError as exc:
        raise DamagedObjectError(str(exc), inode) from exc
    finally:
        os.close(fd)
    return ReadResult(header.key, data, header.object_bytes)


def _delivered(result: ReadResult, out: torch.Tensor | None) -> ReadResult:
    """`result` with its block in `out` when one was given (a copy unless it landed there)."""
    if out is not None and result.data.data_ptr() != out.data_ptr():
        out.copy_(result.data)
        return ReadResult(result.key, out, result.size, result.header_checksum)
    return result


def _verify_landing(landing: _Landing, key: BlockKey, layout: KVLayout, known_header: int | None,
                    page_aligned: bool, checksum: int | None = None) -> int:
    """The header checksum of the raw object that landed, once header and payload are verified
    (`checksum`: the payload's, when the read took it; else taken here in pieces, holding the GIL)."""
    if checksum is None:
        if landing.pieces is None:
            landing.pieces = checksum_pieces(landing.parts[1])
        checksum = pieces_checksum(landing.pieces)
    if checksum != verify_raw_header(landing.header, key, layout, known_header, page_aligned=page_aligned):
        raise FormatError("payload checksum mismatch: the payload is corrupt")
    return stored_header_checksum(landing.header)


@dataclass(slots=True)
class _Landing:
    """Where the fast path reads a block: header buffer, payload bytes, checksum pieces."""

    tensor: torch.Tensor
    data_ptr: int
    header: bytearray
    parts: list[memoryview]  # [header, payload]: one readv
    pieces: list[memoryview] | None  # the payload as checksum_pieces cuts it, once a read needs them
    object_bytes: int  # header + payload: the size of the raw object that fits exactly


def _lands_directly(out: torch.Tensor | None, layout: KVLayout) -> TypeGuard[torch.Tensor]:
    """Whether a read can land in `out` itself: a contiguous CPU block of `layout`."""
    return out is not None and out.is_cpu and out.is_contiguous() and out.shape == layout.block_shape \
        and out.dtype == layout.dtype


def _landing(out: torch.Tensor | None, layout: KVLayout, header_len: int, keep: bool = True) -> _Landing:
    """`out` itself when it is a contiguous CPU block, else a new tensor, and the buffers around it.

    NOTE: the landing of the last `out` is kept per thread (unless `keep` is False), since callers
    reuse one output buffer and building the views costs a noticeable share of a warm read.
    """
    direct = _lands_directly(out, layout)
    if direct:
        cached: _Landing | None = getattr(_local, "landing", None)
        if cached is not None and cached.tensor is out and cached.data_ptr == out.data_ptr() \
                and len(cached.header) == header_len:
            return cached
    target = out if direct and out is not None else torch.empty(layout.block_shape, dtype=layout.dtype)
    payload = tensor_bytes(target)
    header = bytearray(header_len)
    landing = _Landing(target, target.data_ptr(), header, [memoryview(header), payload], None,
                       header_len + payload.nbytes)
    if direct and keep:
        _local.landing = landing
    return landing
