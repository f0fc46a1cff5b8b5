"""The shape of the KV cache (KVLayout), of the model it belongs to (ModelConfig), and the model's
fingerprint that roots every block hash."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvtier.config.checks import check_nonnegative_int, check_positive_int, dtype_name, parse_dtype
from kvtier.presets import MODEL_PRESET_NAMES, MODEL_PRESETS


@dataclass(frozen=True, slots=True, kw_only=True)
class KVLayout:
    """The shape of the KV cache: what one block holds on the device and off it.

    Device, per layer: `k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim]`.
    Off the device, one block is one contiguous object of `block_shape`
    `[num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]`: block-major, with each
    layer's KV heads contiguous so that a range of heads can be read without the rest.

    NOTE: the device pool is block-major `[num_blocks, *block_shape]` (tiers/device.py), so a
    block read from a file lands in the pool with one read and no copy after it.

    Under tensor or pipeline parallelism a rank holds a shard of the model's KV: layers
    [first_layer, first_layer + num_layers) and KV heads [first_kv_head, first_kv_head +
    num_kv_heads) (kvtier/parallel/shards.py); its objects record that range in their header.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # tokens
    dtype: torch.dtype
    first_layer: int = 0
    first_kv_head: int = 0

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            check_positive_int("KVLayout", name, getattr(self, name))
        for name in ("first_layer", "first_kv_head"):
            check_nonnegative_int("KVLayout", name, getattr(self, name))
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
    def head_range(self) -> tuple[int, int]:
        """The model's KV heads this layout holds, [start, end)."""
        return self.first_kv_head, self.first_kv_head + self.num_kv_heads

    @property
    def layer_range(self) -> tuple[int, int]:
        """The model's layers this layout holds, [start, end)."""
        return self.first_layer, self.first_layer + self.num_layers

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "block_size": self.block_size,
            "dtype": dtype_name(self.dtype),
        }
        for name in ("first_layer", "first_kv_head"):  # NOTE: only a shard's; a whole model's dict stays as it was
            if getattr(self, name):
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KVLayout:
        return cls(**{**data, "dtype": parse_dtype(data["dtype"])})


@dataclass(frozen=True, slots=True, kw_only=True)
class RopeScaling:
    """Llama-3's RoPE frequency scaling (`rope_scaling.rope_type == "llama3"` in a HF config)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        check_positive_int("RopeScaling", "original_max_position_embeddings", self.original_max_position_embeddings)
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RopeScaling.{name} must be a number > 0, got {value!r}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"RopeScaling.high_freq_factor ({self.high_freq_factor}) must exceed "
                             f"low_freq_factor ({self.low_freq_factor})")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Shape of a Llama-family decoder (Llama, Qwen2 with q/k/v bias, tied or untied embeddings):
    enough to size its KV cache and to build the reference model."""

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
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections
    tie_word_embeddings: bool = False  # the LM head is the embedding matrix
    eos_token_ids: tuple[int, ...] = ()  # tokens that end a generation ("stop")

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size",
                     "intermediate_size", "vocab_size", "max_position_embeddings"):
            check_positive_int("ModelConfig", name, getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        dtype_name(self.dtype)
        for name in ("qkv_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in self.eos_token_ids):
            raise ValueError(f"ModelConfig.eos_token_ids must be token ids in [0, {self.vocab_size}), "
                             f"got {self.eos_token_ids!r}")

    def kv_layout(self, block_size: int = 16, dtype: torch.dtype | None = None) -> KVLayout:
        """The KV layout this model needs at `block_size` tokens per block."""
        return KVLayout(num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
                        head_dim=self.head_dim, block_size=block_size, dtype=dtype or self.dtype)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A named preset (kvtier/presets.py); names match exactly."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {list(MODEL_PRESET_NAMES)}")
        fields = MODEL_PRESETS[name]
        return cls(name=name, **{**fields, "dtype": parse_dtype(fields["dtype"])})


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
        "vocab_size", "rope_theta", "norm_eps", "rope_scaling", "qkv_bias", "tie_word_embeddings"))
    return f"llama;{dims};dtype={dtype_name(model.dtype)};weights={weights_id}"
