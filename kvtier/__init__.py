"""kvtier: KV-cache blocks tiered across GPU memory, host RAM, NVMe and shared storage.

The public API is re-exported here and imported on first use (PEP 562), so `import kvtier` and
`kvtier --help` do not load torch until something needs it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "namespace_digest": "kvtier.block.hashing",
    "BlockManager": "kvtier.block.manager",
    "TieredKVCache": "kvtier.cache",
    "DeviceTierConfig": "kvtier.config",
    "DiskTierConfig": "kvtier.config",
    "HostTierConfig": "kvtier.config",
    "KVLayout": "kvtier.config",
    "KVTierConfig": "kvtier.config",
    "ModelConfig": "kvtier.config",
    "SharedTierConfig": "kvtier.config",
    "TransferConfig": "kvtier.config",
    "FormatError": "kvtier.errors",
    "KVTierError": "kvtier.errors",
    "OutOfBlocksError": "kvtier.errors",
    "TierFullError": "kvtier.errors",
    "TierIOError": "kvtier.errors",
    "TransferError": "kvtier.errors",
    "BlockKey": "kvtier.tiers.base",
    "TierStore": "kvtier.tiers.base",
    "DiskStore": "kvtier.tiers.disk",
    "HostStore": "kvtier.tiers.host",
    "TransferEngine": "kvtier.transfer.engine",
    "PAD_SLOT_ID": "kvtier.types",
    "BlockHash": "kvtier.types",
    "BlockId": "kvtier.types",
    "Namespace": "kvtier.types",
    "TierKind": "kvtier.types",
}

__all__ = [
    "PAD_SLOT_ID", "BlockHash", "BlockId", "BlockKey", "BlockManager", "DeviceTierConfig", "DiskStore",
    "DiskTierConfig", "FormatError", "HostStore", "HostTierConfig", "KVLayout", "KVTierConfig", "KVTierError",
    "ModelConfig", "Namespace", "OutOfBlocksError", "SharedTierConfig", "TierFullError", "TierIOError", "TierKind",
    "TierStore", "TieredKVCache", "TransferConfig", "TransferEngine", "TransferError", "__version__",
    "namespace_digest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvtier' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # NOTE: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from kvtier.block.hashing import namespace_digest
    from kvtier.block.manager import BlockManager
    from kvtier.cache import TieredKVCache
    from kvtier.config import (
        DeviceTierConfig,
        DiskTierConfig,
        HostTierConfig,
        KVLayout,
        KVTierConfig,
        ModelConfig,
        SharedTierConfig,
        TransferConfig,
    )
    from kvtier.errors import (
        FormatError,
        KVTierError,
        OutOfBlocksError,
        TierFullError,
        TierIOError,
        TransferError,
    )
    from kvtier.tiers.base import BlockKey, TierStore
    from kvtier.tiers.disk import DiskStore
    from kvtier.tiers.host import HostStore
    from kvtier.transfer.engine import TransferEngine
    from kvtier.types import PAD_SLOT_ID, BlockHash, BlockId, Namespace, TierKind
