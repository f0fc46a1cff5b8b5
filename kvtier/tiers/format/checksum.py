"""Payload checksums: xxh3_64 over the whole payload, in one call or in pieces of at most 64 KiB.

NOTE: xxh3_64 (python-xxhash) hashes an order of magnitude faster than any disk reads, so
verifying every byte never caps throughput, where crc32 (zlib) or sha256 could on fast NVMe. It
guards against corruption, not an adversary: the namespace and block hash are checked
separately, and the path is the hash.
"""
from __future__ import annotations

import struct

import xxhash

try:
    from kvtier.tiers.format import _checksums
except ImportError:  # NOTE: not built: no C compiler at install time
    _checksums = None  # type: ignore[assignment]

BufferLike = bytes | bytearray | memoryview
CHECKSUM_CHUNK_BYTES = 64 << 10  # python-xxhash releases the GIL above 64 KiB (XXHASH_GIL_MINSIZE)


def payload_checksum(payload: BufferLike) -> int:
    """xxh3_64 of the payload in one call, which releases the GIL above 64 KiB (writes use it:
    the other I/O threads run their Python meanwhile)."""
    return int(xxhash.xxh3_64_intdigest(memoryview(payload).cast("B")))


def payload_checksums(payload: BufferLike, segment_len: int) -> tuple[int, bytes]:
    """A raw payload's checksum and its segment table (xxh3_64 of each `segment_len`-byte run, packed
    little-endian u64): in one compiled call that gives the GIL up once where built, else the twin."""
    if _checksums is not None:
        return _checksums.payload_checksums(payload, segment_len)
    return py_payload_checksums(payload, segment_len)


def py_payload_checksums(payload: BufferLike, segment_len: int) -> tuple[int, bytes]:
    """The Python twin of `_checksums.payload_checksums`: the same values, a call per segment."""
    if segment_len <= 0:
        raise ValueError(f"segment_len must be > 0, got {segment_len}")
    view = memoryview(payload).cast("B")
    digest = xxhash.xxh3_64_intdigest
    values = [digest(view[at:at + segment_len]) for at in range(0, view.nbytes, segment_len)]
    return payload_checksum(view), struct.pack(f"<{len(values)}Q", *values)


def checksum_pieces(payload: BufferLike) -> list[memoryview]:
    """The payload cut into pieces of at most 64 KiB for pieces_checksum; a reader reusing one buffer keeps them."""
    view = memoryview(payload).cast("B")
    return [view[start:start + CHECKSUM_CHUNK_BYTES] for start in range(0, max(view.nbytes, 1), CHECKSUM_CHUNK_BYTES)]


def pieces_checksum(pieces: list[memoryview]) -> int:
    """payload_checksum of the payload that `pieces` (from checksum_pieces) cut, holding the GIL.

    NOTE: a read's checksum is shorter than what winning the GIL back after a release can cost
    with several I/O threads, so reads keep it.
    """
    if len(pieces) == 1:
        return xxhash.xxh3_64_intdigest(pieces[0])
    state = xxhash.xxh3_64()
    for piece in pieces:
        state.update(piece)
    return state.intdigest()
