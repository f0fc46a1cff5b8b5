"""The self-verifying block object: a fixed little-endian header, then the payload. Pure bytes, no I/O.

Layout of one object (all integers little-endian):

    fixed part  magic 8s, version u16, header_len u32, namespace 32s, block_hash 32s,
                num_layers u32, head_start u32, head_end u32, block_size u32, head_dim u32,
                dtype u8, codec u8, flags u16 (0), num_tokens u32, payload_len u64,
                payload_checksum u64
    token ids   num_tokens x u32
    zero pad    up to header_len - 8 (header_len is a multiple of 64, so the payload is aligned)
    checksum    u64: xxh3_64 of every header byte before it
    payload     payload_len bytes: the block [num_layers, 2, heads, block_size, head_dim], encoded

NOTE: checksums are xxh3_64 (python-xxhash): it hashes at tens of GB/s (about 60 GB/s measured
on this project's CPU), so verifying every byte never caps disk throughput, where crc32 (about
1-3 GB/s in zlib) or sha256 (about 2 GB/s) would. It guards against corruption, not an
adversary: the namespace and block hash are checked separately, and the path is the hash.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, NamedTuple

import torch
import xxhash

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.format_codecs import (
    CODEC_IDS,
    CODEC_NAMES,
    decode_payload,
    encode_payload,
)
from kvtier.types import BlockHash, Namespace

MAGIC = b"KVTIERB\x00"
FORMAT_VERSION = 1
HEADER_ALIGN = 64
MAX_TOKENS = 1 << 20  # far above any block_size; bounds what a corrupt header can ask for
MAX_DIM = 1 << 24
DTYPE_IDS: dict[torch.dtype, int] = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}
DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_IDS.items()}

_FIXED = struct.Struct("<8sHI32s32sIIIIIBBHIQQ")
_CHECKSUM = struct.Struct("<Q")
_NAMESPACE_AT = struct.calcsize("<8sHI")  # offsets of the key's fields in _FIXED
_BLOCK_HASH_AT = _NAMESPACE_AT + 32
_NUM_TOKENS_AT = struct.calcsize("<8sHI32s32sIIIIIBBH")
_U32 = struct.Struct("<I")
FIXED_HEADER_BYTES = _FIXED.size
"""Bytes needed to learn `header_len` (see `header_length`)."""

BufferLike = bytes | bytearray | memoryview


class BlockHeader(NamedTuple):
    """A decoded, checksum-verified header (a NamedTuple: it is built on every read)."""

    namespace: Namespace
    block_hash: BlockHash
    token_ids: tuple[int, ...]
    num_layers: int
    head_start: int
    head_end: int
    block_size: int
    head_dim: int
    dtype: torch.dtype
    codec: str
    header_len: int
    payload_len: int
    payload_checksum: int

    @property
    def key(self) -> BlockKey:
        return BlockKey(self.namespace, self.block_hash, self.token_ids)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """[num_layers, 2, head_end - head_start, block_size, head_dim]."""
        return (self.num_layers, 2, self.head_end - self.head_start, self.block_size, self.head_dim)

    @property
    def raw_payload_bytes(self) -> int:
        layers, kv, heads, tokens, dim = self.block_shape
        return layers * kv * heads * tokens * dim * self.dtype.itemsize

    @property
    def object_bytes(self) -> int:
        return self.header_len + self.payload_len


@lru_cache(maxsize=64)
def _tokens_struct(num_tokens: int) -> struct.Struct:
    return struct.Struct(f"<{num_tokens}I")


def header_bytes_for(num_tokens: int) -> int:
    """The header length of an object whose block carries `num_tokens` token ids."""
    unpadded = _FIXED.size + 4 * num_tokens + _CHECKSUM.size
    return -(-unpadded // HEADER_ALIGN) * HEADER_ALIGN


CHECKSUM_CHUNK = 64 << 10  # python-xxhash releases the GIL above 64 KiB (XXHASH_GIL_MINSIZE)


def payload_checksum(payload: BufferLike) -> int:
    """xxh3_64 of the payload, in one call: python-xxhash releases the GIL for it above 64 KiB.

    Writes use this. In the storage bench (4 threads, 2 cores) releasing the GIL for the
    checksum of a put raised the 256 KiB write ratio from a median of 0.882 to 0.908 (6
    alternating pairs), since the other threads run their Python meanwhile; beside a busy
    scheduler thread it also stalls that thread less. The read fast path keeps the GIL instead
    (pieces_checksum): there, releasing it measured slower.
    """
    return int(xxhash.xxh3_64_intdigest(memoryview(payload).cast("B")))


def checksum_pieces(payload: BufferLike) -> list[memoryview]:
    """The payload cut into pieces of at most 64 KiB for pieces_checksum; a reader reusing one buffer keeps them."""
    view = memoryview(payload).cast("B")
    return [view[start:start + CHECKSUM_CHUNK] for start in range(0, max(view.nbytes, 1), CHECKSUM_CHUNK)]


def pieces_checksum(pieces: list[memoryview]) -> int:
    """payload_checksum of the payload that `pieces` (from checksum_pieces) cut, holding the GIL.

    NOTE: the pieces stay at or under 64 KiB, where python-xxhash keeps the GIL: a read's
    checksum (6 us for 256 KiB) is shorter than what winning the GIL back can cost.
    """
    if len(pieces) == 1:
        return xxhash.xxh3_64_intdigest(pieces[0])
    state = xxhash.xxh3_64()
    for piece in pieces:
        state.update(piece)
    return state.intdigest()


def encode_header(key: BlockKey, layout: KVLayout, codec: str, payload_len: int, checksum: int,
                  head_range: tuple[int, int] | None = None) -> bytes:
    """The header of one object (see the module docstring). Raises ValueError on bad input."""
    _check_key(key)
    start, end = head_range if head_range is not None else (0, layout.num_kv_heads)
    if not 0 <= start < end <= layout.num_kv_heads:
        raise ValueError(f"head_range must satisfy 0 <= start < end <= {layout.num_kv_heads}, got {head_range}")
    if codec not in CODEC_IDS:
        raise ValueError(f"codec must be one of {sorted(CODEC_IDS)}, got {codec!r}")
    try:
        buf = _pack_header(key, layout, CODEC_IDS[codec], start, end, payload_len, checksum)
    except struct.error as exc:  # NOTE: struct range-checks every token id (cheaper than a loop here)
        raise ValueError(f"token ids must be integers in [0, 2**32): {exc}") from exc
    _CHECKSUM.pack_into(buf, len(buf) - 8, xxhash.xxh3_64_intdigest(memoryview(buf)[:-8]))
    return bytes(buf)


def _pack_header(key: BlockKey, layout: KVLayout, codec_id: int, start: int, end: int,
                 payload_len: int, checksum: int) -> bytearray:
    """Every header byte but the trailing header checksum (left zero); inputs already valid."""
    header_len = header_bytes_for(len(key.token_ids))
    buf = bytearray(header_len)
    _FIXED.pack_into(buf, 0, MAGIC, FORMAT_VERSION, header_len, key.namespace, key.block_hash,
                     layout.num_layers, start, end, layout.block_size, layout.head_dim,
                     DTYPE_IDS[layout.dtype], codec_id, 0, len(key.token_ids), payload_len, checksum)
    _tokens_struct(len(key.token_ids)).pack_into(buf, _FIXED.size, *key.token_ids)
    return buf


def stored_header_checksum(buf: BufferLike) -> int:
    """The header checksum field (a header's last 8 bytes), as stored; not verified here."""
    view = memoryview(buf).cast("B")
    return int(_CHECKSUM.unpack_from(view, view.nbytes - _CHECKSUM.size)[0])


def verify_raw_header(buf: bytearray, key: BlockKey, layout: KVLayout, known: int | None = None) -> int:
    """The payload checksum stored in `buf`, which must be the header of a whole raw block of `key`.

    A reader that knows the key knows every header byte but the payload checksum, so the check
    is a comparison with the header this kvtier writes for the key, plus the header checksum:
    a few microseconds where parsing every field costs several times that on each read.

    `known` is the header checksum of the header the store wrote, or last verified, under this
    block hash. If the stored checksum equals it and is the checksum of the bytes read, those
    bytes are that header (bar a 64-bit xxh3 collision, the guarantee the payload checksum
    gives), so only the key's own fields are compared and no expected header is built (2.0
    instead of 2.9 us in a hot loop; more when the interpreter's caches are cold after a read).

    Raises:
        FormatError: anything else, with the reason `decode_header`/`check_identity` give.
    """
    view = memoryview(buf)
    if known is not None and len(buf) > _FIXED.size and stored_header_checksum(buf) == known \
            and xxhash.xxh3_64_intdigest(view[:-8]) == known and _holds_key(buf, key):
        return int(_CHECKSUM.unpack_from(view, _FIXED.size - 8)[0])
    try:
        expected = _pack_header(key, layout, CODEC_IDS["raw"], 0, layout.num_kv_heads,
                                layout.page_size_bytes, 0)
    except struct.error as exc:
        raise ValueError(f"key cannot be stored: {exc}; token ids must be integers in [0, 2**32)") from exc
    checksum_at = _FIXED.size - 8  # payload_checksum: the fixed part's last field
    expected[checksum_at:_FIXED.size] = view[checksum_at:_FIXED.size]  # NOTE: the one free field
    if (len(buf) == len(expected) and view[:-8] == memoryview(expected)[:-8]
            and xxhash.xxh3_64_intdigest(view[:-8]) == _CHECKSUM.unpack_from(view, len(buf) - 8)[0]):
        return int(_CHECKSUM.unpack_from(view, checksum_at)[0])
    header = decode_header(buf)  # raises the precise FormatError for most damage
    check_identity(header, key, layout)
    raise FormatError(f"header of codec {header.codec!r}, KV heads [{header.head_start}, {header.head_end}), "
                      f"payload {header.payload_len} bytes: not a whole raw block of this layout")


def _holds_key(buf: bytearray, key: BlockKey) -> bool:
    """Whether a header's namespace, block hash and token ids are `key`'s (nothing else is read).

    NOTE: `startswith` at an offset compares in place: no slices, 0.7 instead of 1.2 us.
    """
    num_tokens = len(key.token_ids)
    if not (len(key.namespace) == 32 and buf.startswith(key.namespace, _NAMESPACE_AT)
            and len(key.block_hash) == 32 and buf.startswith(key.block_hash, _BLOCK_HASH_AT)
            and _U32.unpack_from(buf, _NUM_TOKENS_AT)[0] == num_tokens
            and _FIXED.size + 4 * num_tokens <= len(buf) - _CHECKSUM.size):
        return False
    try:
        return buf.startswith(_tokens_struct(num_tokens).pack(*key.token_ids), _FIXED.size)
    except struct.error:  # token ids no object can hold: the full check says why
        return False


def encode_block(key: BlockKey, data: torch.Tensor, layout: KVLayout, codec: str = "raw",
                 head_range: tuple[int, int] | None = None) -> list[BufferLike]:
    """One block as the parts of an object: `[header, payload]`, to write in order.

    Args:
        key: the block's identity; namespace and block_hash are 32 bytes each.
        data: the block, `[num_layers, 2, heads, block_size, head_dim]` of `layout.dtype`,
            heads = `layout.num_kv_heads` or the size of `head_range`. Moved to CPU if needed.
        layout: the KV layout the block belongs to.
        codec: "raw" or "zstd" (byte planes, then zstandard).
        head_range: the [start, end) KV heads held by `data`; all heads when None.

    Returns:
        The header bytes and the payload; for "raw" the payload is a view of `data`'s memory,
        valid while `data` is alive and unchanged.

    Raises:
        ValueError: the key, shape, dtype, head range or codec is invalid.
    """
    start, end = head_range if head_range is not None else (0, layout.num_kv_heads)
    shape = (layout.num_layers, 2, end - start, layout.block_size, layout.head_dim)
    if tuple(data.shape) != shape or data.dtype != layout.dtype:
        raise ValueError(f"encode_block expects a tensor of shape {list(shape)} and dtype {layout.dtype}, "
                         f"got {list(data.shape)} {data.dtype}")
    payload = encode_payload(data, codec)
    header = encode_header(key, layout, codec, len(payload), payload_checksum(payload), (start, end))
    return [header, payload]


def header_length(prefix: BufferLike) -> int:
    """The total header length announced by the first FIXED_HEADER_BYTES of an object."""
    view = memoryview(prefix)
    if view.nbytes < _FIXED.size:
        raise FormatError(f"object is {view.nbytes} bytes, shorter than the {_FIXED.size}-byte fixed header")
    magic, version, header_len = struct.unpack_from("<8sHI", view, 0)
    if magic != MAGIC:
        raise FormatError(f"bad magic {bytes(magic)!r}: not a kvtier block object")
    if version != FORMAT_VERSION:
        raise FormatError(f"format version {version} is not supported (this kvtier reads {FORMAT_VERSION})")
    if header_len % HEADER_ALIGN or not _FIXED.size + 8 <= header_len <= header_bytes_for(MAX_TOKENS):
        raise FormatError(f"header length {header_len} is invalid")
    return int(header_len)


def decode_header(buf: BufferLike) -> BlockHeader:
    """Parse and verify the header at the start of `buf` (the payload may be absent).

    Raises:
        FormatError: the bytes are not a valid header (never any other exception).
    """
    view = memoryview(buf).cast("B")
    header_len = header_length(view)
    if view.nbytes < header_len:
        raise FormatError(f"object is {view.nbytes} bytes, shorter than its {header_len}-byte header")
    (stored,) = _CHECKSUM.unpack_from(view, header_len - 8)
    if xxhash.xxh3_64_intdigest(view[:header_len - 8]) != stored:
        raise FormatError("header checksum mismatch: the header is corrupt")
    fields = _FIXED.unpack_from(view, 0)
    num_tokens = fields[13]
    if header_bytes_for(num_tokens) != header_len:
        raise FormatError(f"header length {header_len} does not fit {num_tokens} token ids")
    token_ids = _tokens_struct(num_tokens).unpack_from(view, _FIXED.size)
    padding = view[_FIXED.size + 4 * num_tokens:header_len - 8]
    if padding.nbytes and padding != bytes(padding.nbytes):
        raise FormatError("header padding is not zero")
    return _header_from_fields(fields, tuple(token_ids), header_len)


def decode_block(buf: BufferLike, key: BlockKey | None = None,
                 layout: KVLayout | None = None) -> tuple[BlockHeader, torch.Tensor]:
    """Verify a whole object and decode its block.

    Args:
        buf: the object's bytes. A writable buffer is decoded without a copy for "raw" (the
            tensor shares its memory); a read-only one is copied.
        key: when given, the namespace, block hash and token ids must match it.
        layout: when given, the stored layout must be a head range of it.

    Returns:
        The header and the block, `[num_layers, 2, heads, block_size, head_dim]`.

    Raises:
        FormatError: corrupt, truncated, foreign or mismatching bytes (never any other exception).
    """
    view = memoryview(buf).cast("B")
    header = decode_header(view)
    if key is not None or layout is not None:
        check_identity(header, key, layout)
    payload = payload_view(header, view)
    return header, decode_payload(payload, header.codec, header.dtype, header.block_shape)


def payload_view(header: BlockHeader, buf: BufferLike) -> memoryview:
    """The payload of a verified header's object, its length and checksum verified."""
    view = memoryview(buf).cast("B")
    if view.nbytes != header.object_bytes:
        raise FormatError(f"object is {view.nbytes} bytes, its header announces {header.object_bytes}")
    payload = view[header.header_len:]
    if payload_checksum(payload) != header.payload_checksum:
        raise FormatError("payload checksum mismatch: the payload is corrupt")
    return payload


def check_identity(header: BlockHeader, key: BlockKey | None, layout: KVLayout | None) -> None:
    """Raise FormatError unless the header belongs to `key` and fits `layout`."""
    if key is not None:
        if header.namespace != key.namespace:
            raise FormatError("namespace mismatch: the object belongs to another model or tenant")
        if header.block_hash != key.block_hash:
            raise FormatError("block hash mismatch: the object is stored under the wrong name")
        if header.token_ids != tuple(key.token_ids):
            raise FormatError("token ids mismatch: a hash collision or a corrupt writer")
    if layout is not None:
        stored = (header.num_layers, header.block_size, header.head_dim, header.dtype)
        wanted = (layout.num_layers, layout.block_size, layout.head_dim, layout.dtype)
        if stored != wanted or header.head_end > layout.num_kv_heads:
            raise FormatError(f"layout mismatch: object has (layers, block_size, head_dim, dtype, heads)="
                              f"{stored + ((header.head_start, header.head_end),)}, expected "
                              f"{wanted + ((0, layout.num_kv_heads),)}")


def _header_from_fields(fields: tuple[Any, ...], token_ids: tuple[int, ...], header_len: int) -> BlockHeader:
    (_, _, _, namespace, block_hash, num_layers, head_start, head_end, block_size, head_dim,
     dtype_id, codec_id, flags, _, payload_len, checksum) = fields
    dims = (num_layers, block_size, head_dim, head_end)
    if not all(1 <= d <= MAX_DIM for d in dims):
        raise FormatError(f"layout dims out of range (layers, block_size, head_dim, head_end)={dims}")
    if head_start >= head_end:
        raise FormatError(f"empty KV-head range [{head_start}, {head_end})")
    if dtype_id not in DTYPES or codec_id not in CODEC_NAMES or flags != 0:
        raise FormatError(f"unknown dtype {dtype_id}, codec {codec_id} or flags {flags}")
    # NOTE: fields go in as plain bytes (no NewType calls): this runs on every read.
    header = BlockHeader(namespace, block_hash, token_ids, num_layers, head_start,
                         head_end, block_size, head_dim, DTYPES[dtype_id], CODEC_NAMES[codec_id],
                         header_len, payload_len, checksum)
    raw_bytes = header.raw_payload_bytes
    if header.codec == "raw" and payload_len != raw_bytes:
        raise FormatError(f"raw payload of {payload_len} bytes, the layout needs {raw_bytes}")
    if payload_len > raw_bytes + (1 << 20):
        raise FormatError(f"payload of {payload_len} bytes is far above the {raw_bytes} it encodes")
    return header


def _check_key(key: BlockKey) -> None:
    if len(key.namespace) != 32 or len(key.block_hash) != 32:
        raise ValueError(f"namespace and block_hash must be 32 bytes, got {len(key.namespace)} "
                         f"and {len(key.block_hash)}")
    if len(key.token_ids) > MAX_TOKENS:
        raise ValueError(f"a block holds at most {MAX_TOKENS} token ids, got {len(key.token_ids)}")
