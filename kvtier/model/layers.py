"""RMSNorm, rotary position embedding (with Llama-3 frequency scaling) and the SwiGLU MLP.

Each follows HuggingFace transformers' Llama modules op for op (dtype casts included), so a
float32 model here gives transformers' logits to float32 rounding and the same greedy tokens.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from kvtier import ops
from kvtier.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the mean taken in float32."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        out: torch.Tensor = self.weight * x.to(dtype)
        return out


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) computed by `kvtier.ops.linear`, from a copy
    of the weight in the device's fastest layout (`ops.pack_linear_weight`: oneDNN's on CPU).

    The copy is made on first use and again whenever the weight changes (moved, cast, loaded into);
    it doubles the weight's memory on CPU and is not part of the state dict.
    """

    _packed: tuple[tuple[torch.Tensor, int, int, torch.dtype], torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias, self._packed_weight())

    def __getstate__(self) -> dict[str, object]:
        """Without the packed copy (an opaque tensor copy.deepcopy cannot copy): copies pack again."""
        state = dict(self.__dict__)
        state.pop("_packed", None)
        return state

    def _packed_weight(self) -> torch.Tensor | None:
        weight = self.weight
        key = (weight, weight.data_ptr(), weight._version, weight.dtype)
        if self._packed is None or self._packed[0][0] is not weight or self._packed[0][1:] != key[1:]:
            self._packed = (key, ops.pack_linear_weight(weight))
        return self._packed[1]


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies `[head_dim / 2]` (float32), Llama-3-scaled when `scaling` is given."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class Rotary(nn.Module):
    """Applies RoPE to q and k `[tokens, heads, head_dim]` at each token's position."""

    inv_freq: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [head_dim / 2]

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rotary(q, k, self.cos_sin(positions, q.dtype))

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin `[tokens, 1, head_dim]` at each token's position; once per step, for every layer."""
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]  # [tokens, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [tokens, 1, head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor,
                 cos_sin: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k `[tokens, heads, head_dim]` with `Rotary.cos_sin` of their positions."""
    cos, sin = cos_sin
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
