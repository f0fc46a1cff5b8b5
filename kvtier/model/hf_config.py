"""ModelConfig from a HuggingFace `config.json` (transformers 4 and 5 spellings), at the edge.

Llama and Qwen2 architectures; what the reference decoder cannot run exactly (sliding windows,
biased output or MLP projections, RoPE types other than default and llama3) is refused by name.
"""
from __future__ import annotations

from typing import Any

import torch

from kvtier.config import ModelConfig, RopeScaling, parse_dtype
from kvtier.errors import UnsupportedModelError

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def model_config_from_hf(data: dict[str, Any], *, name: str, dtype: torch.dtype | str | None = None) -> ModelConfig:
    """The ModelConfig of a HF config dict; `dtype` overrides the checkpoint's `torch_dtype`.

    Raises:
        UnsupportedModelError: an architecture or option this decoder does not implement.
        ValueError: a field out of range (from ModelConfig's checks).
    """
    arch = _architecture(data)
    _refuse_options(data, arch)
    rope = _rope_parameters(data)
    heads = int(data["num_attention_heads"])
    eos = data.get("eos_token_id")
    return ModelConfig(
        name=name, num_layers=int(data["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(data.get("num_key_value_heads") or heads),
        head_dim=int(data.get("head_dim") or int(data["hidden_size"]) // heads),
        hidden_size=int(data["hidden_size"]), intermediate_size=int(data["intermediate_size"]),
        vocab_size=int(data["vocab_size"]), max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
        rope_theta=float(rope.get("rope_theta", data.get("rope_theta", 10000.0))),
        norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        dtype=parse_dtype(dtype if dtype is not None else _checkpoint_dtype(data)),
        rope_scaling=_rope_scaling(rope), qkv_bias=arch == "qwen2" or bool(data.get("attention_bias", False)),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)))


def _architecture(data: dict[str, Any]) -> str:
    names = data.get("architectures") or []
    model_type = data.get("model_type")
    for arch in names:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if not names and model_type in ARCHITECTURES.values():
        return str(model_type)
    raise UnsupportedModelError(f"architecture {names or model_type!r} is not supported; the reference decoder runs "
                                f"{sorted(ARCHITECTURES)}")


def _refuse_options(data: dict[str, Any], arch: str) -> None:
    if data.get("use_sliding_window") or (arch == "llama" and data.get("sliding_window")):
        raise UnsupportedModelError("sliding-window attention is not supported (use_sliding_window / sliding_window)")
    layer_types = set(data.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise UnsupportedModelError(f"layer types {sorted(layer_types)} are not supported; only full_attention")
    if arch == "llama" and data.get("attention_bias"):
        raise UnsupportedModelError("attention_bias=True (a biased o_proj) is not supported")
    if data.get("mlp_bias"):
        raise UnsupportedModelError("mlp_bias=True is not supported")
    if data.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {data['hidden_act']!r} is not supported; only silu (SwiGLU)")


def _rope_parameters(data: dict[str, Any]) -> dict[str, Any]:
    rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise UnsupportedModelError(f"RoPE type {kind!r} is not supported; only default and llama3")
    return dict(rope, rope_type=kind)


def _rope_scaling(rope: dict[str, Any]) -> RopeScaling | None:
    if rope["rope_type"] != "llama3":
        return None
    return RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                       high_freq_factor=float(rope["high_freq_factor"]),
                       original_max_position_embeddings=int(rope["original_max_position_embeddings"]))


def _checkpoint_dtype(data: dict[str, Any]) -> str:
    name = str(data.get("dtype") or data.get("torch_dtype") or "float32")
    return name.removeprefix("torch.")
