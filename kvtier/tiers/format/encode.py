"""One block as the parts of an object (`[header, payload]`), ready to write in order. No I/O."""
from __future__ import annotations

import torch

from kvtier.config import KVLayout
from kvtier.tiers.base import BlockKey
from kvtier.tiers.format.checksum import BufferLike, payload_checksum, payload_checksums
from kvtier.tiers.format.codecs import encode_payload
from kvtier.tiers.format.header import encode_header, segment_bytes


def encode_block(key: BlockKey, data: torch.Tensor, layout: KVLayout, codec: str = "raw",
                 head_range: tuple[int, int] | None = None, segments: bool = True,
                 page_aligned: bool = False) -> list[BufferLike]:
    """One block as the parts of an object: `[header, payload]`, to write in order.

    Args:
        key: the block's identity; namespace and block_hash are 32 bytes each.
        data: the block, `[num_layers, 2, heads, block_size, head_dim]` of `layout.dtype`,
            heads = `layout.num_kv_heads` or the size of `head_range`. Moved to CPU if needed.
        layout: the KV layout the block belongs to.
        codec: "raw" or "zstd" (byte planes, then zstandard).
        head_range: the model's KV heads [start, end) held by `data`, within `layout.head_range`;
            all of the layout's when None.
        segments: whether a raw payload's header carries its segment table, which a reader of some
            layers or heads verifies; an object always read whole (the remote tier's) goes without,
            and its payload is hashed once instead of twice.
        page_aligned: pad the header to a page (the disk tier's O_DIRECT mode), so that the payload
            starts on one in the file.

    Returns:
        The header bytes and the payload; for "raw" the payload is a view of `data`'s memory,
        valid while `data` is alive and unchanged.

    Raises:
        ValueError: the key, shape, dtype, head range or codec is invalid.
    """
    start, end = head_range if head_range is not None else layout.head_range
    shape = (layout.num_layers, 2, end - start, layout.block_size, layout.head_dim)
    if tuple(data.shape) != shape or data.dtype != layout.dtype:
        raise ValueError(f"encode_block expects a tensor of shape {list(shape)} and dtype {layout.dtype}, "
                         f"got {list(data.shape)} {data.dtype}")
    payload = encode_payload(data, codec)
    if codec == "raw" and segments:
        checksum, table = payload_checksums(payload, segment_bytes(layout))
    else:
        checksum, table = payload_checksum(payload), b""
    header = encode_header(key, layout, codec, len(payload), checksum, (start, end), table, page_aligned)
    return [header, payload]
