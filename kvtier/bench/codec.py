"""Codec throughput: compression ratio and encode/decode GB/s of the block format on normal KV data."""
from __future__ import annotations

import time
from typing import Any

import torch

from kvtier.block.hashing import hash_block_tokens, namespace_digest
from kvtier.config import ModelConfig, dtype_name
from kvtier.tiers.base import BlockKey

DTYPES = (torch.float16, torch.bfloat16)


def _best_s(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def codec_case(model: ModelConfig, block_size: int, dtype: torch.dtype, codec: str, repeat: int) -> dict[str, Any]:
    """Encode and decode one standard-normal block (whole object, checksums included), best of `repeat`.

    GB/s counts the block's raw bytes per second; ratio is raw bytes / payload bytes.
    """
    from kvtier.tiers.format import decode_block, encode_block

    layout = model.kv_layout(block_size, dtype)
    data = torch.randn(layout.block_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    namespace = namespace_digest("kvtier-bench/codec")
    token_ids = tuple(range(block_size))
    key = BlockKey(namespace, hash_block_tokens(namespace, token_ids), token_ids)
    parts = encode_block(key, data, layout, codec)
    obj = bytearray(b"".join(bytes(p) for p in parts))
    _, back = decode_block(obj, key, layout)
    if not torch.equal(back.view(torch.uint8), data.view(torch.uint8)):
        raise RuntimeError(f"{codec} round trip of a {dtype_name(dtype)} block changed its bytes")
    encode_s = _best_s(lambda: encode_block(key, data, layout, codec), repeat)
    decode_s = _best_s(lambda: decode_block(obj, key, layout), repeat)
    raw_bytes = layout.page_size_bytes
    return {"codec": codec, "dtype": dtype_name(dtype), "model": model.name, "block_bytes": raw_bytes,
            "payload_bytes": len(parts[1]), "ratio": raw_bytes / len(parts[1]),
            "encode_gbps": raw_bytes / encode_s / 1e9, "decode_gbps": raw_bytes / decode_s / 1e9}


def codec_report(model: ModelConfig, block_size: int = 16, repeat: int = 20) -> list[dict[str, Any]]:
    """Every codec on fp16 and bf16 blocks of `model`'s shape."""
    return [codec_case(model, block_size, dtype, codec, repeat)
            for codec in ("raw", "zstd") for dtype in DTYPES]
