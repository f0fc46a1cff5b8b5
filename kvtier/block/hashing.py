"""Chained block hashes: sha256(parent, extra keys, token ids), rooted in a namespace digest.

The namespace digest binds the model fingerprint and the tenant's cache salt, so two tenants
(or two models) never share a hash. Only full blocks are hashed; a partial tail never is.
"""
from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import cast

from kvtier.types import BlockHash, Namespace

HASH_BYTES = 32
_NAMESPACE_DOMAIN = b"kvtier/namespace/v1"


def _field(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def namespace_digest(model_fingerprint: str | bytes, cache_salt: str | bytes | None = None) -> Namespace:
    """The root of every chain: model fingerprint and tenant salt, length-prefixed then hashed.

    Args:
        model_fingerprint: identifies architecture, dims, dtype and weights (see model_fingerprint).
        cache_salt: the tenant's secret salt; None for the shared (no-tenant) namespace.
    """
    fp = model_fingerprint.encode() if isinstance(model_fingerprint, str) else bytes(model_fingerprint)
    salt = cache_salt.encode() if isinstance(cache_salt, str) else (cache_salt or b"")
    has_salt = b"\x01" if cache_salt is not None else b"\x00"
    return Namespace(hashlib.sha256(_NAMESPACE_DOMAIN + _field(fp) + has_salt + _field(salt)).digest())


def token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint64 bytes; raises ValueError for anything but ints >= 0."""
    try:
        packed = array("Q", token_ids)  # NOTE: unsigned, so a negative id fails here, at C speed
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"token ids must be integers in [0, 2**64), got {type(token_ids).__name__} "
                         f"holding an element that fails: {exc}") from None
    if sys.byteorder == "big":  # NOTE: digests must match across machines
        packed.byteswap()
    return packed.tobytes()


def hash_block_tokens(parent: BlockHash | Namespace, token_ids: Sequence[int],
                      extra_keys: bytes = b"") -> BlockHash:
    """The hash of one full block given its parent's hash (or the namespace for the first block)."""
    return hash_blocks(parent, token_ids, len(token_ids), extra_keys)[0]


def hash_blocks(parent: BlockHash | Namespace, token_ids: Sequence[int], block_size: int,
                extra_keys: bytes = b"") -> list[BlockHash]:
    """Chained hashes of every full block of `token_ids`, starting after `parent`.

    Args:
        parent: the namespace digest for a sequence's first block, else the previous block's hash.
        token_ids: tokens from the first block to hash onwards; a partial tail is ignored.
        block_size: tokens per block.
        extra_keys: bytes bound into every block's hash (LoRA id, image hashes of the request).
    """
    if len(parent) != HASH_BYTES:
        raise ValueError(f"parent hash must be {HASH_BYTES} bytes, got {len(parent)}")
    data = token_bytes(token_ids)
    step = 8 * block_size
    salt = _field(extra_keys)  # NOTE: length-prefixed, so (extra, tokens) splits one way only
    sha256, join = hashlib.sha256, b"".join
    hashes: list[bytes] = []
    append = hashes.append
    prev = bytes(parent)
    for start in range(0, (len(token_ids) // block_size) * step, step):
        prev = sha256(join((prev, salt, data[start:start + step]))).digest()
        append(prev)
    return cast(list[BlockHash], hashes)  # NOTE: no per-block NewType call on the hot path
