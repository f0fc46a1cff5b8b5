"""kvtier: KV-cache blocks tiered across GPU memory, host RAM, NVMe and shared storage."""
from kvtier.config import CacheConfig, DiskTierConfig, KVLayout, KVTierConfig, ModelConfig
from kvtier.errors import (FormatError, KVTierError, OutOfBlocksError, TierFullError, TierIOError,
                           TransferError)
from kvtier.types import PAD_SLOT_ID, BlockHash, BlockId, Namespace, TierKind

__version__ = "0.1.0"

__all__ = [
    "PAD_SLOT_ID", "BlockHash", "BlockId", "CacheConfig", "DiskTierConfig", "FormatError",
    "KVLayout", "KVTierConfig", "KVTierError", "ModelConfig", "Namespace", "OutOfBlocksError",
    "TierFullError", "TierIOError", "TierKind", "TransferError", "__version__",
]
