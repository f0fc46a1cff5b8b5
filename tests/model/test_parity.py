"""The reference decoder against HuggingFace transformers: random-weight Llama and Qwen2 checkpoints
saved with save_pretrained give the same greedy tokens as `model.generate`, also when the prompts'
blocks spill to host and disk and come back as prefix hits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import DiskTierConfig, HostTierConfig
from kvtier.model.generate import generate_greedy
from kvtier.model.weights import fingerprint, load_hf_folder
from kvtier.tiers.build import open_tier
from kvtier.types import TierKind

transformers = pytest.importorskip("transformers")

PROMPTS = [[7], [1, 5, 9, 33, 7], list(range(3, 20)), [(11 * i + 5) % 250 for i in range(33)]]
NEW_TOKENS = 10
SHAPES = {
    "llama-gqa": dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64),
    "llama-mqa-head80": dict(num_attention_heads=2, num_key_value_heads=1, hidden_size=160, head_dim=80),
    "llama-tied": dict(num_attention_heads=4, num_key_value_heads=4, hidden_size=64, tie_word_embeddings=True),
    "llama3-rope-scaling": dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "qwen2-bias-tied": dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64, tie_word_embeddings=True),
}


def hf_checkpoint(tmp_path: Path, name: str, seed: int = 0) -> tuple[Path, object]:
    """A random-weight HF model of shape `name`, saved to a folder; returns (folder, model)."""
    cls = transformers.Qwen2ForCausalLM if name.startswith("qwen2") else transformers.LlamaForCausalLM
    config_cls = transformers.Qwen2Config if name.startswith("qwen2") else transformers.LlamaConfig
    config = config_cls(vocab_size=256, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=256,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None, **SHAPES[name])
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # NOTE: HF initialises biases to zero; random ones prove they are loaded
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder, model


def hf_greedy(model: object, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)  # type: ignore[attr-defined]
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_greedy_tokens_equal_transformers_generate(tmp_path: Path, name: str) -> None:
    folder, hf = hf_checkpoint(tmp_path, name)
    model = load_hf_folder(folder, dtype="float32")
    assert model.config.qkv_bias == name.startswith("qwen2")
    cache = TieredKVCache(model.config.kv_layout(block_size=4), 64)
    got = generate_greedy(model, cache, PROMPTS, namespace_digest(fingerprint(model), None), max_new_tokens=NEW_TOKENS)
    assert [g.token_ids for g in got] == [hf_greedy(hf, p) for p in PROMPTS]


def test_prefixes_spilled_to_disk_come_back_and_give_the_same_tokens(tmp_path: Path) -> None:
    folder, hf = hf_checkpoint(tmp_path, "llama-gqa")
    model = load_hf_folder(folder, dtype="float32")
    layout = model.config.kv_layout(block_size=4)
    tiers = [open_tier(layout, HostTierConfig(num_blocks=3)),
             open_tier(layout, DiskTierConfig(path=str(tmp_path / "disk"), capacity_bytes=1 << 24, fsync=False))]
    cache = TieredKVCache(layout, 16, tiers)  # 16 blocks: one long prompt and its reply at a time
    namespace = namespace_digest(fingerprint(model), None)
    long_prompts = [[(7 * i + p) % 250 for i in range(37)] for p in range(4)]
    first = [generate_greedy(model, cache, [p], namespace, max_new_tokens=NEW_TOKENS)[0] for p in long_prompts]
    again = [generate_greedy(model, cache, [p], namespace, max_new_tokens=NEW_TOKENS)[0] for p in long_prompts]
    cache.close()
    expected = [hf_greedy(hf, p) for p in long_prompts]
    assert [g.token_ids for g in first] == expected and [g.token_ids for g in again] == expected
    assert all(g.num_cached_tokens == 36 for g in again)  # 9 full blocks of 4, the last token computed
    assert cache.stats.hit_blocks[TierKind.DISK] >= 9  # at least one whole prefix came back from the disk


def test_another_model_never_hits_the_first_ones_blocks(tmp_path: Path) -> None:
    first = load_hf_folder(hf_checkpoint(tmp_path, "llama-gqa", seed=0)[0], dtype="float32")
    second = load_hf_folder(hf_checkpoint(tmp_path / "b", "llama-gqa", seed=1)[0], dtype="float32")
    assert fingerprint(first) != fingerprint(second)
    cache = TieredKVCache(first.config.kv_layout(block_size=4), 64)
    generate_greedy(first, cache, PROMPTS[2:], namespace_digest(fingerprint(first), None), max_new_tokens=2)
    got = generate_greedy(second, cache, PROMPTS[2:], namespace_digest(fingerprint(second), None), max_new_tokens=2)
    assert [g.num_cached_tokens for g in got] == [0, 0]
