"""The self-verifying block object every lower tier stores: header, codecs, checksums, verification.

Pure bytes, no I/O: the disk, shared-folder and remote tiers write `encode_block`'s parts and
check what they read back with `verify`.
"""
from kvtier.tiers.format.checksum import (
    CHECKSUM_CHUNK_BYTES,
    BufferLike,
    checksum_pieces,
    payload_checksum,
    payload_checksums,
    pieces_checksum,
)
from kvtier.tiers.format.encode import encode_block
from kvtier.tiers.format.header import (
    FIXED_HEADER_BYTES,
    MAX_HEADER_BYTES,
    MAX_OBJECT_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TOKENS,
    BlockHeader,
    decode_header,
    encode_header,
    header_bytes_for,
    header_length,
    max_object_bytes,
    num_segments,
    segment_bytes,
    stored_header_checksum,
)
from kvtier.tiers.format.verify import (
    check_identity,
    decode_block,
    payload_view,
    verify_object,
    verify_raw_header,
)

__all__ = [
    "CHECKSUM_CHUNK_BYTES", "FIXED_HEADER_BYTES", "MAX_HEADER_BYTES", "MAX_OBJECT_BYTES", "MAX_PAYLOAD_BYTES",
    "MAX_TOKENS", "BlockHeader",
    "BufferLike", "check_identity", "checksum_pieces", "decode_block", "decode_header", "encode_block",
    "encode_header", "header_bytes_for", "header_length", "max_object_bytes", "num_segments", "payload_checksum",
    "payload_checksums", "payload_view", "pieces_checksum", "segment_bytes", "stored_header_checksum",
    "verify_object", "verify_raw_header",
]
