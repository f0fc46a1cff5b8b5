"""Which transformers models TieredCache can serve, decided from the config before any compute."""
from __future__ import annotations

from typing import Any

from kvtier.errors import UnsupportedModelError


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) of a decoder whose every layer is full attention.

    Raises:
        UnsupportedModelError: encoder-decoder, sliding-window or linear-attention layers, latent
            (MLA) or chunked attention, a quantized KV cache, or a config without the attention dims.
            (A quantized cache asked of `generate` with `cache_implementation=` is refused by
            transformers itself when a cache object is passed too.)
    """
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    name = getattr(text, "model_type", type(text).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name}: encoder-decoder models are not supported by TieredCache (it holds one "
                                    f"decoder self-attention cache); use transformers' EncoderDecoderCache")
    layer_types = list(getattr(text, "layer_types", None) or [])
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        raise UnsupportedModelError(f"{name}: layers of type {other} ({sum(t in other for t in layer_types)} of "
                                    f"{len(layer_types)}) are not supported by TieredCache, which serves full "
                                    f"attention only; use transformers' DynamicCache for this model")
    window = getattr(text, "sliding_window", None)
    if window is not None and getattr(text, "use_sliding_window", True):
        raise UnsupportedModelError(f"{name}: sliding-window attention (window {window}) is not supported by "
                                    f"TieredCache; use transformers' DynamicCache for this model")
    quantization = getattr(config, "quantization_config", None) or {}
    kv_scheme = (quantization.get("kv_cache_scheme") if isinstance(quantization, dict)
                 else getattr(quantization, "kv_cache_scheme", None))
    if kv_scheme:
        raise UnsupportedModelError(f"{name}: the checkpoint asks for a quantized KV cache ({kv_scheme}); TieredCache "
                                    f"stores K/V in the attention's own dtype; load the model without kv_cache_scheme")
    if getattr(text, "kv_lora_rank", None) or getattr(text, "attention_chunk_size", None):
        raise UnsupportedModelError(f"{name}: latent (MLA) or chunked attention is not supported by TieredCache")
    try:
        num_layers, num_heads = int(text.num_hidden_layers), int(text.num_attention_heads)
        num_kv_heads = int(getattr(text, "num_key_value_heads", None) or num_heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // num_heads)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"{name}: the config does not give the attention dims TieredCache needs (num_"
                                    f"hidden_layers, num_attention_heads, hidden_size or head_dim): {exc}") from None
    return num_layers, num_kv_heads, head_dim
