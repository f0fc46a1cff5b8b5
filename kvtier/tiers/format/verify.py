"""Whether an object is the block a reader asked for: key, layout, whole block, both checksums.

Shared by every tier that stores objects (disk, shared folder, remote). A reader that knows the
key knows every header byte but the payload checksum, so the fast check is a comparison with the
header this kvtier writes for that key; anything else goes through full parsing once.
"""
from __future__ import annotations

import struct

import torch
import xxhash

from kvtier.config import KVLayout
from kvtier.errors import FormatError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.format.checksum import BufferLike, payload_checksum
from kvtier.tiers.format.codecs import CODEC_IDS, decode_payload, tensor_bytes
from kvtier.tiers.format.header import (
    BLOCK_HASH_AT,
    FIXED_HEADER_BYTES,
    NAMESPACE_AT,
    NUM_TOKENS_AT,
    PAYLOAD_CHECKSUM_AT,
    U32,
    U64,
    BlockHeader,
    checksum_of_header,
    decode_header,
    num_segments,
    pack_header,
    stored_header_checksum,
    stored_payload_checksum,
    tokens_struct,
)


def decode_block(buf: BufferLike, key: BlockKey | None = None,
                 layout: KVLayout | None = None) -> tuple[BlockHeader, torch.Tensor]:
    """Verify a whole object and decode its block.

    Args:
        buf: the object's bytes. A writable buffer is decoded without a copy for "raw" (the
            tensor shares its memory); a read-only one is copied.
        key: when given, the namespace, block hash and token ids must match it.
        layout: when given, the stored block must be its layers and a range of its KV heads.

    Returns:
        The header and the block, `[num_layers, 2, heads, block_size, head_dim]`.

    Raises:
        FormatError: corrupt, truncated, foreign or mismatching bytes (never any other exception).
    """
    view = memoryview(buf).cast("B")
    header = decode_header(view)
    return header, _decode_verified(header, view, key, layout)


def verify_object(buf: BufferLike, key: BlockKey | None, layout: KVLayout, header: BlockHeader | None = None,
                  out: torch.Tensor | None = None) -> tuple[BlockHeader, torch.Tensor]:
    """The header and block of a whole object that holds every KV head of `layout` (and is `key`'s).

    `header`: the object's header when the caller decoded it already (it is not parsed again).
    `out`: a contiguous CPU block a raw payload is copied into, once, straight from `buf` (which may
    then be read-only: a value a client handed over); the block returned is `out` itself. Other
    codecs, or another `out`, decode as without it (the caller copies).

    Raises:
        FormatError: corrupt, foreign, of another layout, or only a head range.
    """
    view = memoryview(buf).cast("B")
    header = header if header is not None else decode_header(view)
    if (header.head_start, header.head_end) != layout.head_range:
        raise FormatError(f"object holds KV heads [{header.head_start}, {header.head_end}), "
                          f"this tier serves blocks of KV heads {list(layout.head_range)}")
    return header, _decode_verified(header, view, key, layout, out)


def _decode_verified(header: BlockHeader, view: memoryview, key: BlockKey | None,
                     layout: KVLayout | None, out: torch.Tensor | None = None) -> torch.Tensor:
    if key is not None or layout is not None:
        check_identity(header, key, layout)
    payload = payload_view(header, view)
    if header.codec == "raw" and out is not None and out.is_cpu and out.is_contiguous():
        target = tensor_bytes(out)
        if payload.nbytes != target.nbytes:
            raise FormatError(f"payload is {payload.nbytes} bytes, the block {target.nbytes}")
        target[:] = payload
        return out
    return decode_payload(payload, header.codec, header.dtype, header.block_shape)


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
    """Raise FormatError unless the header belongs to `key` and fits `layout` (its layers, a range of its heads)."""
    if key is not None:
        if header.namespace != key.namespace:
            raise FormatError("namespace mismatch: the object belongs to another model or tenant")
        if header.block_hash != key.block_hash:
            raise FormatError("block hash mismatch: the object is stored under the wrong name")
        if header.token_ids != tuple(key.token_ids):
            raise FormatError("token ids mismatch: a hash collision or a corrupt writer")
    if layout is not None:
        stored = (header.num_layers, header.first_layer, header.block_size, header.head_dim, header.dtype)
        wanted = (layout.num_layers, layout.first_layer, layout.block_size, layout.head_dim, layout.dtype)
        first, last = layout.head_range
        if stored != wanted or not first <= header.head_start < header.head_end <= last:
            raise FormatError(f"layout mismatch: object has (layers, first layer, block_size, head_dim, dtype, "
                              f"heads)={stored + ((header.head_start, header.head_end),)}, expected "
                              f"{wanted + (layout.head_range,)}")


def verify_raw_header(buf: bytearray, key: BlockKey, layout: KVLayout, known: int | None = None,
                      segments: bool = True, page_aligned: bool = False) -> int:
    """The payload checksum stored in `buf`, which must be the header of a whole raw block of `key`
    with its segment table, or without one if `segments` is False, padded to a page if
    `page_aligned` (encode_block's `segments` and `page_aligned`).

    `known` is the header checksum of the header the store wrote, or last verified, under this
    block hash. If the stored checksum equals it and is the checksum of the bytes read, those
    bytes are that header (bar a 64-bit xxh3 collision, the guarantee the payload checksum
    gives), so only the key's own fields are compared and no expected header is built.

    Raises:
        FormatError: anything else, with the reason `decode_header`/`check_identity` give.
    """
    view = memoryview(buf)
    # NOTE: struct on the bytearray itself, no casts or helper calls: this runs on every fast-path read
    if known is not None and len(buf) > FIXED_HEADER_BYTES and U64.unpack_from(buf, len(buf) - 8)[0] == known \
            and xxhash.xxh3_64_intdigest(view[:-8]) == known and holds_key(buf, key):
        return int(U64.unpack_from(buf, PAYLOAD_CHECKSUM_AT)[0])
    table_bytes = 8 * num_segments(layout) if segments else 0
    try:
        expected = pack_header(key, layout, CODEC_IDS["raw"], *layout.head_range, layout.page_size_bytes, 0,
                               bytes(table_bytes), page_aligned)
    except struct.error as exc:
        raise ValueError(f"key cannot be stored: {exc}; token ids must be integers in [0, 2**32)") from exc
    at, end = PAYLOAD_CHECKSUM_AT, FIXED_HEADER_BYTES
    expected[at:end] = view[at:end]  # NOTE: the fields a reader cannot know: the payload's checksums
    table = FIXED_HEADER_BYTES + 4 * len(key.token_ids)
    expected[table:table + table_bytes] = view[table:table + table_bytes]
    if (len(buf) == len(expected) and view[:-8] == memoryview(expected)[:-8]
            and checksum_of_header(view) == stored_header_checksum(view)):
        return stored_payload_checksum(buf)
    header = decode_header(buf)  # raises the precise FormatError for most damage
    check_identity(header, key, layout)
    raise FormatError(f"header of codec {header.codec!r}, KV heads [{header.head_start}, {header.head_end}), "
                      f"payload {header.payload_len} bytes: not a whole raw block of this layout")


def holds_key(buf: bytearray, key: BlockKey) -> bool:
    """Whether a header's namespace, block hash and token ids are `key`'s (nothing else is read).

    NOTE: `startswith` at an offset compares in place, without slicing.
    """
    num_tokens = len(key.token_ids)
    if not (len(key.namespace) == 32 and buf.startswith(key.namespace, NAMESPACE_AT)
            and len(key.block_hash) == 32 and buf.startswith(key.block_hash, BLOCK_HASH_AT)
            and U32.unpack_from(buf, NUM_TOKENS_AT)[0] == num_tokens
            and FIXED_HEADER_BYTES + 4 * num_tokens <= len(buf) - 8):
        return False
    try:
        return buf.startswith(tokens_struct(num_tokens).pack(*key.token_ids), FIXED_HEADER_BYTES)
    except struct.error:  # token ids no object can hold: the full check says why
        return False
