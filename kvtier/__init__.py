"""kvtier: KV-cache blocks tiered across GPU memory, host RAM, NVMe and shared storage."""
from kvtier.block.hashing import namespace_digest
from kvtier.block.manager import BlockManager
from kvtier.cache import TieredKVCache
from kvtier.config import (
                           CacheConfig,
                           DiskTierConfig,
                           KVLayout,
                           KVTierConfig,
                           ModelConfig,
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

__version__ = "0.1.0"

__all__ = [
    "PAD_SLOT_ID", "BlockHash", "BlockId", "BlockKey", "BlockManager", "CacheConfig", "DiskStore",
    "DiskTierConfig", "FormatError", "HostStore", "KVLayout", "KVTierConfig", "KVTierError", "ModelConfig",
    "Namespace", "OutOfBlocksError", "TierFullError", "TierIOError", "TierKind", "TierStore",
    "TieredKVCache", "TransferEngine", "TransferError", "__version__", "namespace_digest",
]
