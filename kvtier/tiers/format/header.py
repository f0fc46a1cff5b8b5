"""The fixed little-endian header of a block object: layout, packing, parsing. Pure bytes, no I/O.

Layout of one object (all integers little-endian):

    fixed part  magic 8s, version u16, header_len u32, namespace 32s, block_hash 32s,
                num_layers u32, first_layer u32, head_start u32, head_end u32, block_size u32, head_dim u32,
                dtype u8, codec u8, flags u16, num_tokens u32, payload_len u64,
                payload_checksum u64
    token ids   num_tokens x u32
    segments    num_layers x 2 x heads u64 (flags bit 0; raw payloads): xxh3_64 of each contiguous
                [block_size, head_dim] run of the payload, in payload order, so that a reader of some
                layers or heads verifies exactly the bytes it reads
    zero pad    up to header_len - 8 (header_len is a multiple of 64, so the payload is aligned; of
                4096 with flags bit 1, so that the payload starts on a page and the disk tier's
                O_DIRECT mode reads it straight into a page-aligned host slot)
    checksum    u64: xxh3_64 of every header byte before it
    payload     payload_len bytes: the block [num_layers, 2, heads, block_size, head_dim], encoded

The object holds the model's layers [first_layer, first_layer + num_layers) and KV heads
[head_start, head_end): all of them, or one rank's shard under tensor or pipeline parallelism.
Version 2 added first_layer and the segment checksums; version 1 objects read as misses (and are
removed as damaged). Flags bit 1 (page-aligned headers) is version 2 too: a reader that predates it
rejects such objects as damage, as it would any unknown flag.
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
from kvtier.tiers.format.checksum import BufferLike
from kvtier.tiers.format.codecs import CODEC_IDS, CODEC_NAMES
from kvtier.types import BlockHash, Namespace

MAGIC = b"KVTIERB\x00"
FORMAT_VERSION = 2
HEADER_ALIGN = 64
PAGE_ALIGN = 4096  # a page-aligned header's (flags bit 1); every disk's logical block divides it
MAX_TOKENS = 1 << 20  # far above any block_size; bounds what a corrupt header can ask for
MAX_DIM = 1 << 24
MAX_PAYLOAD_BYTES = 1 << 30  # far above any real block (Llama-3-70B at 16 tokens: 5 MiB); bounds a read
ZSTD_SLACK_BYTES = 1 << 20  # what an incompressible payload may grow by under zstd
FLAG_SEGMENT_CHECKSUMS = 1
FLAG_PAGE_ALIGNED = 2
KNOWN_FLAGS = FLAG_SEGMENT_CHECKSUMS | FLAG_PAGE_ALIGNED
DTYPE_IDS: dict[torch.dtype, int] = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}
DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_IDS.items()}

_FIXED = struct.Struct("<8sHI32s32sIIIIIIBBHIQQ")
_CHECKSUM = U64 = struct.Struct("<Q")
_U32 = U32 = struct.Struct("<I")
NAMESPACE_AT = struct.calcsize("<8sHI")  # offsets of the key's fields in the fixed part
BLOCK_HASH_AT = NAMESPACE_AT + 32
NUM_TOKENS_AT = struct.calcsize("<8sHI32s32sIIIIIIBBH")
PAYLOAD_CHECKSUM_AT = _FIXED.size - 8  # the fixed part's last field
FIXED_HEADER_BYTES = _FIXED.size
"""Bytes needed to learn `header_len` (see `header_length`)."""
MAX_HEADER_BYTES = -(-(_FIXED.size + 4 * MAX_TOKENS + 8) // PAGE_ALIGN) * PAGE_ALIGN
MAX_OBJECT_BYTES = MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES + ZSTD_SLACK_BYTES  # of any layout: a reader's bound


class BlockHeader(NamedTuple):
    """A decoded, checksum-verified header (a NamedTuple: it is built on every slow-path read)."""

    namespace: Namespace
    block_hash: BlockHash
    token_ids: tuple[int, ...]
    num_layers: int
    first_layer: int
    head_start: int
    head_end: int
    block_size: int
    head_dim: int
    dtype: torch.dtype
    codec: str
    header_len: int
    payload_len: int
    payload_checksum: int
    segment_checksums: bytes = b""  # num_layers * 2 * heads little-endian u64, or none

    @property
    def segment_bytes(self) -> int:
        """Bytes of one [block_size, head_dim] run of the payload (what one segment checksum covers)."""
        return self.block_size * self.head_dim * self.dtype.itemsize

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
def tokens_struct(num_tokens: int) -> struct.Struct:
    return struct.Struct(f"<{num_tokens}I")


def header_bytes_for(num_tokens: int, num_segments: int = 0, page_aligned: bool = False) -> int:
    """The header length of an object whose block carries `num_tokens` token ids and `num_segments`
    segment checksums, padded to a page when `page_aligned`."""
    unpadded = _FIXED.size + 4 * num_tokens + 8 * num_segments + _CHECKSUM.size
    align = PAGE_ALIGN if page_aligned else HEADER_ALIGN
    return -(-unpadded // align) * align


def num_segments(layout: KVLayout) -> int:
    """Segment checksums in the header of a raw object of `layout`: one per (layer, K|V, KV head)."""
    return layout.num_layers * 2 * layout.num_kv_heads


def segment_bytes(layout: KVLayout) -> int:
    """Bytes of one [block_size, head_dim] run of a block of `layout`."""
    return layout.block_size * layout.head_dim * layout.dtype.itemsize


def max_object_bytes(layout: KVLayout) -> int:
    """The largest object a block of `layout` can be stored as (a page-aligned header; zstd may grow a
    payload a little)."""
    return header_bytes_for(layout.block_size, num_segments(layout), True) + layout.page_size_bytes + ZSTD_SLACK_BYTES


def encode_header(key: BlockKey, layout: KVLayout, codec: str, payload_len: int, checksum: int,
                  head_range: tuple[int, int] | None = None, segments: bytes = b"", page_aligned: bool = False) -> bytes:
    """The header of one object (see the module docstring). Raises ValueError on bad input.

    `head_range`: the model's KV heads the payload holds, within `layout.head_range` (all of it when None).
    `segments`: the payload's segment table (`checksum.payload_checksums`), or none.
    `page_aligned`: pad the header to PAGE_ALIGN (flags bit 1).
    """
    _check_key(key)
    start, end = head_range if head_range is not None else layout.head_range
    first, last = layout.head_range
    if not first <= start < end <= last:
        raise ValueError(f"head_range must satisfy {first} <= start < end <= {last}, got {head_range}")
    if codec not in CODEC_IDS:
        raise ValueError(f"codec must be one of {sorted(CODEC_IDS)}, got {codec!r}")
    try:
        buf = pack_header(key, layout, CODEC_IDS[codec], start, end, payload_len, checksum, segments, page_aligned)
    except struct.error as exc:  # NOTE: struct range-checks every token id (cheaper than a loop here)
        raise ValueError(f"token ids must be integers in [0, 2**32): {exc}") from exc
    _CHECKSUM.pack_into(buf, len(buf) - 8, xxhash.xxh3_64_intdigest(memoryview(buf)[:-8]))
    return bytes(buf)


def pack_header(key: BlockKey, layout: KVLayout, codec_id: int, start: int, end: int,
                payload_len: int, checksum: int, segments: bytes = b"", page_aligned: bool = False) -> bytearray:
    """Every header byte but the trailing header checksum (left zero); inputs already valid."""
    header_len = header_bytes_for(len(key.token_ids), len(segments) // 8, page_aligned)
    buf = bytearray(header_len)
    flags = (FLAG_SEGMENT_CHECKSUMS if segments else 0) | (FLAG_PAGE_ALIGNED if page_aligned else 0)
    _FIXED.pack_into(buf, 0, MAGIC, FORMAT_VERSION, header_len, key.namespace, key.block_hash,
                     layout.num_layers, layout.first_layer, start, end, layout.block_size, layout.head_dim,
                     DTYPE_IDS[layout.dtype], codec_id, flags, len(key.token_ids), payload_len, checksum)
    at = _FIXED.size + 4 * len(key.token_ids)
    tokens_struct(len(key.token_ids)).pack_into(buf, _FIXED.size, *key.token_ids)
    buf[at:at + len(segments)] = segments
    return buf


def stored_header_checksum(buf: BufferLike) -> int:
    """The header checksum field (a header's last 8 bytes), as stored; not verified here."""
    view = memoryview(buf).cast("B")
    return int(_CHECKSUM.unpack_from(view, view.nbytes - _CHECKSUM.size)[0])


def checksum_of_header(buf: BufferLike) -> int:
    """xxh3_64 of a header's bytes before its checksum field (what the field must hold)."""
    return int(xxhash.xxh3_64_intdigest(memoryview(buf).cast("B")[:-_CHECKSUM.size]))


def stored_payload_checksum(buf: BufferLike) -> int:
    return int(_CHECKSUM.unpack_from(memoryview(buf).cast("B"), PAYLOAD_CHECKSUM_AT)[0])


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
    if header_len % HEADER_ALIGN or not _FIXED.size + 8 <= header_len <= MAX_HEADER_BYTES:
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
    if checksum_of_header(view[:header_len]) != stored_header_checksum(view[:header_len]):
        raise FormatError("header checksum mismatch: the header is corrupt")
    fields = _FIXED.unpack_from(view, 0)
    num_tokens, flags, layers, heads = fields[14], fields[13], fields[5], fields[8] - fields[7]
    segments = layers * 2 * heads if flags & FLAG_SEGMENT_CHECKSUMS and 0 < heads <= MAX_DIM else 0
    if header_bytes_for(num_tokens, segments, bool(flags & FLAG_PAGE_ALIGNED)) != header_len:
        raise FormatError(f"header length {header_len} does not fit {num_tokens} token ids and {segments} "
                          "segment checksums")
    token_ids = tokens_struct(num_tokens).unpack_from(view, _FIXED.size)
    at = _FIXED.size + 4 * num_tokens
    padding = view[at + 8 * segments:header_len - 8]
    if padding.nbytes and padding != bytes(padding.nbytes):
        raise FormatError("header padding is not zero")
    return _header_from_fields(fields, tuple(token_ids), header_len, bytes(view[at:at + 8 * segments]))


def _header_from_fields(fields: tuple[Any, ...], token_ids: tuple[int, ...], header_len: int,
                        segments: bytes) -> BlockHeader:
    (_, _, _, namespace, block_hash, num_layers, first_layer, head_start, head_end, block_size, head_dim,
     dtype_id, codec_id, flags, _, payload_len, checksum) = fields
    dims = (num_layers, block_size, head_dim, head_end, first_layer + num_layers)
    if not all(1 <= d <= MAX_DIM for d in dims):
        raise FormatError(f"layout dims out of range (layers, block_size, head_dim, head_end, layer_end)={dims}")
    if head_start >= head_end:
        raise FormatError(f"empty KV-head range [{head_start}, {head_end})")
    if dtype_id not in DTYPES or codec_id not in CODEC_NAMES or flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown dtype {dtype_id}, codec {codec_id} or flags {flags}")
    if segments and CODEC_NAMES[codec_id] != "raw":
        raise FormatError(f"segment checksums on a {CODEC_NAMES[codec_id]!r} payload (only raw payloads have them)")
    # NOTE: fields go in as plain bytes (no NewType calls): this runs on every slow-path read.
    header = BlockHeader(namespace, block_hash, token_ids, num_layers, first_layer, head_start,
                         head_end, block_size, head_dim, DTYPES[dtype_id], CODEC_NAMES[codec_id],
                         header_len, payload_len, checksum, segments)
    raw_bytes = header.raw_payload_bytes
    if raw_bytes > MAX_PAYLOAD_BYTES:
        raise FormatError(f"header announces a {raw_bytes}-byte block, above the {MAX_PAYLOAD_BYTES} any block can be")
    if header.codec == "raw" and payload_len != raw_bytes:
        raise FormatError(f"raw payload of {payload_len} bytes, the layout needs {raw_bytes}")
    if payload_len > raw_bytes + ZSTD_SLACK_BYTES:
        raise FormatError(f"payload of {payload_len} bytes is far above the {raw_bytes} it encodes")
    return header


def _check_key(key: BlockKey) -> None:
    if len(key.namespace) != 32 or len(key.block_hash) != 32:
        raise ValueError(f"namespace and block_hash must be 32 bytes, got {len(key.namespace)} "
                         f"and {len(key.block_hash)}")
    if len(key.token_ids) > MAX_TOKENS:
        raise ValueError(f"a block holds at most {MAX_TOKENS} token ids, got {len(key.token_ids)}")
