"""Frozen, validated configuration: the KV layout and model shape, one config per tier, and the
whole cache (KVTierConfig). Errors name the field, the value and the rule; files and dicts are
parsed only at the edges (parse.py)."""
from kvtier.config.cache import KVTierConfig, TransferConfig
from kvtier.config.checks import (
    SUPPORTED_DTYPES,
    check_bool,
    check_mode,
    check_nonnegative_int,
    check_positive_int,
    dtype_name,
    parse_dtype,
)
from kvtier.config.model import KVLayout, ModelConfig, RopeScaling, model_fingerprint
from kvtier.config.tiers import (
    DeviceTierConfig,
    DiskTierConfig,
    FolderTierConfig,
    HostTierConfig,
    RemoteTierConfig,
    SharedTierConfig,
    TierConfig,
)
from kvtier.presets import MODEL_PRESET_NAMES

__all__ = [
    "MODEL_PRESET_NAMES", "SUPPORTED_DTYPES", "DeviceTierConfig", "DiskTierConfig", "FolderTierConfig",
    "HostTierConfig", "KVLayout", "KVTierConfig", "ModelConfig", "RemoteTierConfig", "RopeScaling", "SharedTierConfig",
    "TierConfig",
    "TransferConfig",
    "check_bool", "check_mode", "check_nonnegative_int", "check_positive_int", "dtype_name", "model_fingerprint",
    "parse_dtype",
]
