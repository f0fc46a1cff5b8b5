"""Named model shapes (after gpt-fast's `transformer_configs`), as plain data: importing this module
costs nothing, so the CLI can list the names without loading torch. `ModelConfig.preset` builds them."""
from __future__ import annotations

from typing import Any

_LLAMA3 = {"vocab_size": 128256, "rope_theta": 500000.0, "dtype": "bfloat16"}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, intermediate_size=128,
                 vocab_size=256, max_position_embeddings=1024, rope_theta=10000.0, dtype="float32"),
    "llama-3-8b": dict(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, hidden_size=4096,
                       intermediate_size=14336, **_LLAMA3),
    "llama-3-70b": dict(num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, hidden_size=8192,
                        intermediate_size=28672, **_LLAMA3),
    "llama-2-7b": dict(num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, hidden_size=4096,
                       intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
                       rope_theta=10000.0, dtype="float16"),
    "smollm2-135m": dict(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, hidden_size=576,
                         intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, dtype="float32"),  # the demo model's shape (its weights: GGUF)
    "qwen2.5-0.5b": dict(num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, hidden_size=896,
                         intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, tie_word_embeddings=True,
                         dtype="float32"),  # splits at TP=2 (SmolLM2-135M's 9 heads do not): kvtier bench parallel
    "qwen2.5-7b": dict(num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, hidden_size=3584,
                       intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768,
                       rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, dtype="bfloat16"),
}
MODEL_PRESET_NAMES: tuple[str, ...] = tuple(sorted(MODEL_PRESETS))
