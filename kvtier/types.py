"""Identifier types shared across kvtier, the tier enum, and the tensor padding constant."""
from __future__ import annotations

import enum
from typing import NewType

BlockId = NewType("BlockId", int)  # index of a block in the device pool
BlockHash = NewType("BlockHash", bytes)  # 32-byte chained digest of a full block (hashing.py)
Namespace = NewType("Namespace", bytes)  # 32-byte digest of model fingerprint + tenant salt
SeqId = NewType("SeqId", str)  # a request's id, chosen by the caller

# NOTE: the only integer sentinel in kvtier. It lives inside int tensors (block tables,
# slot mappings) where None cannot; the kernels skip slots and blocks equal to it.
PAD_SLOT_ID = -1


class TierKind(enum.Enum):
    """Where a block lives, fastest first."""

    DEVICE = "device"
    HOST = "host"
    DISK = "disk"
    SHARED = "shared"  # a folder several hosts share (NFS)
    REMOTE = "remote"  # a Redis/Valkey server or cluster
