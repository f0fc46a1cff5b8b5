"""TieredCache against transformers' DynamicCache: the same tokens from `generate` in every mode
(greedy, seeded sampling, beam search, assisted decoding, padded batches, a manual loop), all
resident and spilling through host and disk, a second chat turn that reuses the first, and the
configs it refuses by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvtier.errors import LostBlocksError, UnsupportedModelError

transformers = pytest.importorskip("transformers", minversion="5.0")
from kvtier.integrations.hf import TieredCache  # noqa: E402  (needs transformers)

SHAPES = {
    "llama-gqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64)),
    "llama-mqa-head80": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                         dict(num_attention_heads=2, num_key_value_heads=1, hidden_size=160, head_dim=80)),
    "qwen2-bias": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                   dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64)),
}
PROMPT_LEN, NEW_TOKENS = 45, 20  # 65 tokens: 4 full blocks of 16 and a tail, per layer and row


def tiny(name: str, seed: int = 0, num_layers: int = 2):
    config_cls, model_cls, shape = SHAPES[name]
    config = config_cls(vocab_size=256, intermediate_size=96, num_hidden_layers=num_layers,
                        max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=0, **shape)
    torch.manual_seed(seed)
    return model_cls(config).eval()


def prompts(batch: int, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.tensor([[(7 * i + 13 * b + 3) % 255 + 1 for i in range(length)] for b in range(batch)])


def caches(model, tmp_path: Path):
    """(name, cache factory): all resident, and spilling (a device pool of 7 blocks, 4 host blocks, a
    disk), with and without the next layer's blocks prefetched."""
    return [("resident", lambda: TieredCache(model.config)),
            ("spilling", lambda: TieredCache(model.config, device_blocks=7, host_blocks=4,
                                             disk_dir=str(tmp_path), fsync=False, prefetch_layers=False)),
            ("spilling-prefetch", lambda: TieredCache(model.config, device_blocks=7, host_blocks=4,
                                                      disk_dir=str(tmp_path), fsync=False, prefetch_layers=True))]


def generate(model, cache, ids, **kwargs):
    if "seed" in kwargs:
        torch.manual_seed(kwargs.pop("seed"))
    with torch.no_grad():
        return model.generate(ids, cache=cache, max_new_tokens=NEW_TOKENS, **kwargs)


def assert_each_cache_gives_dynamic_caches_tokens(model, tmp_path: Path, ids, check=None, **kwargs) -> None:
    """`generate` through each of `caches` equals it through DynamicCache; `check(label, cache)` then runs."""
    expected = generate(model, transformers.DynamicCache(config=model.config), ids, **kwargs)
    for label, make in caches(model, tmp_path):
        cache = make()
        try:
            assert torch.equal(generate(model, cache, ids, **kwargs), expected), label
            if check is not None:
                check(label, cache)
        finally:
            cache.close()


MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.9, top_k=20, seed=3),
    "beam": dict(do_sample=False, num_beams=3),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_generate_gives_dynamic_caches_tokens(tmp_path: Path, name: str, mode: str) -> None:
    def spilled_and_came_back(label: str, cache: TieredCache) -> None:
        if label.startswith("spilling"):
            assert (cache.store.prefetched_rows > 0) == (label == "spilling-prefetch"), cache.store.prefetched_rows
            lower = sum(n for kind, n in cache.kv.stats.hit_blocks.items() if kind.value != "device")
            assert cache.kv.stats.offloaded_blocks > 0 and lower > 0, cache.kv.stats

    assert_each_cache_gives_dynamic_caches_tokens(tiny(name), tmp_path, prompts(2), spilled_and_came_back,
                                                  **MODES[mode])


def test_a_padded_batch_gives_dynamic_caches_tokens(tmp_path: Path) -> None:
    model = tiny("llama-gqa")
    ids, mask = prompts(3), torch.ones(3, PROMPT_LEN, dtype=torch.int64)
    ids[1, :9], mask[1, :9] = 0, 0  # left padding, as transformers pads for generation
    ids[2, :30], mask[2, :30] = 0, 0
    assert_each_cache_gives_dynamic_caches_tokens(model, tmp_path, ids, attention_mask=mask, do_sample=False)


def test_assisted_decoding_crops_back_to_dynamic_caches_tokens(tmp_path: Path) -> None:
    model, assistant = tiny("llama-gqa", seed=0, num_layers=3), tiny("llama-gqa", seed=1, num_layers=1)
    assert_each_cache_gives_dynamic_caches_tokens(model, tmp_path, prompts(1), do_sample=False,
                                                  assistant_model=assistant)


def test_a_manual_forward_loop_gets_the_same_logits(tmp_path: Path) -> None:
    model, ids = tiny("qwen2-bias"), prompts(2, 40)
    theirs, ours = transformers.DynamicCache(config=model.config), caches(model, tmp_path)[1][1]()
    try:
        with torch.no_grad():
            for chunk in (ids[:, :17], ids[:, 17:33], ids[:, 33:34], ids[:, 34:]):
                expected = model(chunk, cache=theirs).logits
                torch.testing.assert_close(model(chunk, cache=ours).logits, expected, rtol=0, atol=0)
        assert ours.get_seq_length() == theirs.get_seq_length() == 40
    finally:
        ours.close()


def test_a_context_four_times_the_device_budget_stays_within_it(tmp_path: Path) -> None:
    model, ids = tiny("llama-gqa", num_layers=4), prompts(1, 120)
    budget = 9  # blocks of 16 tokens of one layer: (120 + 20) tokens x 4 layers is 36 blocks
    expected = generate(model, transformers.DynamicCache(config=model.config), ids, do_sample=False)
    cache = TieredCache(model.config, device_blocks=budget, disk_dir=str(tmp_path), fsync=False)
    try:
        assert torch.equal(generate(model, cache, ids, do_sample=False), expected)
        assert cache.kv.pool.num_blocks == budget and cache.kv.manager.num_free_blocks <= budget
        assert cache.kv.stats.hit_blocks[cache.kv.tiers[0].kind] > 0
    finally:
        cache.close()


def test_the_next_chat_turn_reuses_the_first_and_matches_dynamic_cache(tmp_path: Path) -> None:
    model = tiny("llama-gqa")
    turn1 = prompts(1, 40)
    results = {}
    for label, make in [("dynamic", lambda: transformers.DynamicCache(config=model.config)), *caches(model, tmp_path)]:
        cache = make()
        first = generate(model, cache, turn1, do_sample=False)
        turn2 = torch.cat((first, prompts(1, 12) + 1), dim=1)
        results[label] = generate(model, cache, turn2, do_sample=False)
        if label != "dynamic":
            assert cache.reused_tokens == first.shape[1] - 1  # the last output token's K/V was never computed
            cache.close()
    assert torch.equal(results["resident"], results["dynamic"])
    assert torch.equal(results["spilling"], results["dynamic"])


def test_blocks_lost_for_want_of_a_lower_tier_raise_instead_of_wrong_tokens() -> None:
    model = tiny("llama-gqa")
    cache = TieredCache(model.config, device_blocks=5)  # no host or disk: evicted blocks are dropped
    try:
        with pytest.raises(LostBlocksError, match="host or disk tier"):
            generate(model, cache, prompts(2), do_sample=False)
    finally:
        cache.close()


@pytest.mark.parametrize("config, what", [
    (lambda: transformers.MistralConfig(sliding_window=64, num_hidden_layers=2), "sliding-window"),
    (lambda: transformers.Qwen2Config(use_sliding_window=True, sliding_window=32, max_window_layers=1,
                                      num_hidden_layers=2), "sliding"),
    (lambda: transformers.T5Config(), "encoder-decoder"),
    (lambda: transformers.DeepseekV3Config(num_hidden_layers=2), "latent"),
    (lambda: transformers.LlamaConfig(num_hidden_layers=2, quantization_config={
        "quant_method": "compressed-tensors", "kv_cache_scheme": {"num_bits": 8, "type": "float"}}), "quantized KV"),
])
def test_configs_it_cannot_serve_are_refused_by_name(config, what) -> None:
    with pytest.raises(UnsupportedModelError, match=what):
        TieredCache(config())


def test_a_pool_too_small_for_one_row_of_one_layer_says_how_large_it_must_be() -> None:
    from kvtier.errors import OutOfBlocksError
    model = tiny("llama-gqa")
    cache = TieredCache(model.config, device_blocks=3, host_blocks=64)
    try:
        with pytest.raises(OutOfBlocksError, match="raise device_blocks to at least 4"):
            generate(model, cache, prompts(1, 50), do_sample=False)
    finally:
        cache.close()


def test_a_whole_kv_tier_config_serves_too_and_a_mismatched_one_is_refused(tmp_path: Path) -> None:
    from kvtier.config import DeviceTierConfig, DiskTierConfig, KVLayout, KVTierConfig

    model, ids = tiny("llama-gqa"), prompts(1)
    layout = KVLayout(num_layers=1, num_kv_heads=2, head_dim=16, block_size=8, dtype=torch.float32)
    config = KVTierConfig(layout=layout, device=DeviceTierConfig(num_blocks=12),
                          tiers=(DiskTierConfig(path=str(tmp_path), capacity_bytes=1 << 24, fsync=False),))
    expected = generate(model, transformers.DynamicCache(config=model.config), ids, do_sample=False)
    cache = TieredCache(model.config, kv_config=config)
    try:
        assert torch.equal(generate(model, cache, ids, do_sample=False), expected)
        assert cache.kv.stats.hit_blocks[cache.kv.tiers[0].kind] > 0
    finally:
        cache.close()
    with pytest.raises(ValueError, match="num_kv_heads=2 and head_dim=16"):
        TieredCache(model.config, kv_config=KVTierConfig(layout=KVLayout(
            num_layers=2, num_kv_heads=2, head_dim=16, block_size=8, dtype=torch.float32),
            device=DeviceTierConfig(num_blocks=4)))
    with pytest.raises(ValueError, match="not both"):
        TieredCache(model.config, kv_config=config, device_blocks=4)


def test_a_decode_step_reads_spilled_blocks_through_without_moving_them_up(tmp_path: Path) -> None:
    model, ids = tiny("llama-gqa", num_layers=4), prompts(1, 64)
    cache = TieredCache(model.config, device_blocks=9, disk_dir=str(tmp_path), fsync=False)
    try:
        with torch.no_grad():
            model(ids, cache=cache, use_cache=True)  # 4 blocks a layer, 16 in all: most went to disk
            allocator = cache.kv.manager.allocator
            evicted, disk_hits = allocator.num_evicted, cache.kv.stats.hit_blocks[cache.kv.tiers[0].kind]
            model(prompts(1, 1), cache=cache, use_cache=True)  # adds no full block
        assert allocator.num_evicted == evicted  # no device block taken, so none evicted
        assert cache.kv.stats.hit_blocks[cache.kv.tiers[0].kind] > disk_hits
    finally:
        cache.close()


def test_decode_steps_after_the_first_read_spilled_layers_as_planned_with_the_same_logits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read-through of a spilled layer plans the next ones (TieredKVCache.plan_read); they
    then read as planned, and a block damaged on disk fails the plan, never the logits: the usual read
    finds the damage and the layer's blocks are lost (no host tier here), as they would be without plans."""
    from kvtier.cache import TieredKVCache

    model, ids = tiny("llama-gqa", num_layers=4), prompts(1, 64)
    ours, theirs = TieredCache(model.config, device_blocks=9, disk_dir=str(tmp_path), fsync=False), \
        transformers.DynamicCache(config=model.config)
    outcomes: list[bool] = []
    read_planned = TieredKVCache.read_planned

    def spy(self, plan, outs):  # type: ignore[no-untyped-def]
        outcomes.append(read_planned(self, plan, outs))
        return outcomes[-1]

    monkeypatch.setattr(TieredKVCache, "read_planned", spy)
    try:
        with torch.no_grad():
            for chunk in (ids, *(prompts(1, 1) for _ in range(4))):  # no step adds a full block
                torch.testing.assert_close(model(chunk, cache=ours).logits, model(chunk, cache=theirs).logits,
                                           rtol=0, atol=0)
            assert outcomes and all(outcomes) and ours.kv.stats.hit_blocks[ours.kv.tiers[0].kind] > 0
            planned = len(outcomes)
            victim = min(tmp_path.rglob("*.kvb"))
            data = bytearray(victim.read_bytes())
            data[-3] ^= 0x01
            victim.write_bytes(bytes(data))
            with pytest.raises(LostBlocksError):
                model(prompts(1, 1), cache=ours)
        assert False in outcomes[planned:] and ours.kv.tiers[0].stats.corrupt == 1
    finally:
        ours.close()
