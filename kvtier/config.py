"""Frozen, validated configuration: the KV layout spec, model presets, tiers, and their composition."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a supported dtype ('bfloat16'); raises ValueError for any other."""
    for name, candidate in SUPPORTED_DTYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {dtype!r}")


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name ('bf16' and 'fp16' are accepted too)."""
    if isinstance(value, torch.dtype):
        dtype_name(value)
        return value
    aliases = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
    name = aliases.get(str(value), str(value))
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {value!r}")
    return SUPPORTED_DTYPES[name]


def check_positive_int(owner: str, name: str, value: object) -> None:
    """Raise ValueError unless value is an int >= 1 (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KVLayout:
    """The shape of the KV cache: what one block holds on the device and off it.

    Device, per layer: `k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]`.
    Off the device, one block is one contiguous object of `block_shape`
    `[num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]`: block-major, with each
    layer's KV heads contiguous so that a range of heads can be read without the rest.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # tokens
    dtype: torch.dtype

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            check_positive_int("KVLayout", name, getattr(self, name))
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"KVLayout.dtype must be a torch.dtype, got {self.dtype!r}")
        dtype_name(self.dtype)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token, all layers and KV heads."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def layer_page_size_bytes(self) -> int:
        """K and V of one block in one layer."""
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def page_size_bytes(self) -> int:
        """K and V of one block, all layers: the size of one block object's payload (raw codec)."""
        return self.num_layers * self.layer_page_size_bytes

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of one block off the device: [num_layers, 2, num_kv_heads, block_size, head_dim]."""
        return (self.num_layers, 2, self.num_kv_heads, self.block_size, self.head_dim)

    @property
    def device_cache_shape(self) -> tuple[int, int, int]:
        """Per-block shape on the device, after num_blocks: [block_size, num_kv_heads, head_dim]."""
        return (self.block_size, self.num_kv_heads, self.head_dim)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "block_size": self.block_size,
            "dtype": dtype_name(self.dtype),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVLayout:
        return cls(**{**data, "dtype": parse_dtype(data["dtype"])})


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Shape of a Llama-family decoder; enough to size its KV cache and to build the reference model."""

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size",
                     "intermediate_size", "vocab_size", "max_position_embeddings"):
            check_positive_int("ModelConfig", name, getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        dtype_name(self.dtype)

    def kv_layout(self, block_size: int = 16, dtype: torch.dtype | None = None) -> KVLayout:
        """The KV layout this model needs at `block_size` tokens per block."""
        return KVLayout(num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
                        head_dim=self.head_dim, block_size=block_size, dtype=dtype or self.dtype)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A named preset; names match exactly (see MODEL_PRESETS)."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
        return MODEL_PRESETS[name]


MODEL_PRESETS: dict[str, ModelConfig] = {
    p.name: p
    for p in (
        ModelConfig(name="tiny", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    hidden_size=64, intermediate_size=128, vocab_size=256,
                    max_position_embeddings=1024, rope_theta=10000.0, dtype=torch.float32),
        ModelConfig(name="llama-3-8b", num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                    hidden_size=4096, intermediate_size=14336, vocab_size=128256),
        ModelConfig(name="llama-3-70b", num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128,
                    hidden_size=8192, intermediate_size=28672, vocab_size=128256),
        ModelConfig(name="llama-2-7b", num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                    hidden_size=4096, intermediate_size=11008, vocab_size=32000,
                    max_position_embeddings=4096, rope_theta=10000.0, dtype=torch.float16),
        ModelConfig(name="qwen2.5-7b", num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                    hidden_size=3584, intermediate_size=18944, vocab_size=152064,
                    max_position_embeddings=32768, rope_theta=1000000.0, norm_eps=1e-6),
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """The device pool and host tier sizes, in blocks."""

    num_device_blocks: int
    num_host_blocks: int = 0  # 0: no host tier
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_positive_int("CacheConfig", "num_device_blocks", self.num_device_blocks)
        if isinstance(self.num_host_blocks, bool) or not isinstance(self.num_host_blocks, int) \
                or self.num_host_blocks < 0:
            raise ValueError(f"CacheConfig.num_host_blocks must be an integer >= 0, got {self.num_host_blocks!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskTierConfig:
    """A folder tier: local NVMe (`shared=False`) or an NFS mount shared by several hosts."""

    path: str
    capacity_bytes: int
    min_free_bytes: int = 0  # floor of free space on the filesystem, read from statvfs
    fsync: bool = True
    codec: str = "raw"
    shared: bool = False
    tmpfile: bool = True  # local tiers: publish O_TMPFILE inodes with linkat where the filesystem can
    native_io: bool = True  # object I/O through the compiled routines where built (disk_native.py); False: Python

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("DiskTierConfig.path must be a non-empty folder path")
        check_positive_int("DiskTierConfig", "capacity_bytes", self.capacity_bytes)
        if isinstance(self.min_free_bytes, bool) or not isinstance(self.min_free_bytes, int) \
                or self.min_free_bytes < 0:
            raise ValueError(f"DiskTierConfig.min_free_bytes must be an integer >= 0, got {self.min_free_bytes!r}")
        if self.codec not in ("raw", "zstd"):
            raise ValueError(f"DiskTierConfig.codec must be 'raw' or 'zstd', got {self.codec!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KVTierConfig:
    """Everything a tiered cache needs: layout, pool sizes, lower tiers, identity."""

    layout: KVLayout
    cache: CacheConfig
    disk: tuple[DiskTierConfig, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVTierConfig:
        """Build from plain data (parsed YAML/JSON); the only place configs are parsed."""
        return cls(layout=KVLayout.from_dict(data["layout"]), cache=CacheConfig(**data["cache"]),
                   disk=tuple(DiskTierConfig(**d) for d in data.get("disk", ())))


def model_fingerprint(model: ModelConfig, weights_id: str) -> str:
    """What a KV cache depends on: architecture, dims, dtype and the weights' identity.

    Args:
        weights_id: identifies the exact weights (e.g. a checkpoint's sha256 or a revision);
            two fine-tunes of one architecture must differ here, or they would share KV.
    """
    if not weights_id:
        raise ValueError("weights_id must be a non-empty string naming the exact weights (e.g. their sha256)")
    dims = ",".join(f"{name}={getattr(model, name)}" for name in (
        "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "intermediate_size",
        "vocab_size", "rope_theta", "norm_eps"))
    return f"llama;{dims};dtype={dtype_name(model.dtype)};weights={weights_id}"
