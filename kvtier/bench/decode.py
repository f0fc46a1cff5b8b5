"""Decode throughput of the engine against transformers' `generate` on the same weights, in one run.

Both sides get the same prompts (greedy, no EoS); their tokens are checked equal before anything
is timed. Decode time is a full generation's wall time less a one-token generation's (the
prefill), so tokens/s counts generated tokens after the first. Rounds alternate which side runs
first.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from kvtier.cache import TieredKVCache
from kvtier.config import ModelConfig
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.model.weights import random_model


def hf_twin(model: Any) -> Any:
    """transformers' LlamaForCausalLM holding the same weights as our Transformer (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c: ModelConfig = model.config
    fields: dict[str, Any] = dict(  # NOTE: rope_theta is accepted by transformers 4 and 5 alike
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, head_dim=c.head_dim,
        num_key_value_heads=c.num_kv_heads, max_position_embeddings=c.max_position_embeddings,
        rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf: Any = LlamaForCausalLM(LlamaConfig(**fields))  # NOTE: Any: transformers' own stubs mistype .to()
    hf = hf.to(c.dtype).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    return hf


def _ours(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    engine = LLMEngine(model, TieredKVCache(model.config.kv_layout(16), 4096),
                       EngineConfig(max_num_seqs=len(prompts), max_num_batched_tokens=8192))
    start = time.perf_counter()
    outputs = engine.generate([Request(request_id=str(i), prompt_token_ids=tuple(p), max_tokens=new_tokens)
                               for i, p in enumerate(prompts)])
    return [o.token_ids for o in outputs], time.perf_counter() - start


def _theirs(hf: Any, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    ids = torch.tensor(prompts)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[:, ids.shape[1]:].tolist(), time.perf_counter() - start


def decode_bench(preset: str, batch: int, prompt_len: int, new_tokens: int, rounds: int) -> dict[str, Any]:
    model = random_model(dataclasses.replace(ModelConfig.preset(preset), eos_token_ids=()), seed=0)
    hf = hf_twin(model)
    prompts = [[(13 * i + 7 * b) % model.config.vocab_size for i in range(prompt_len)] for b in range(batch)]
    mine, theirs = _ours(model, prompts, new_tokens)[0], _theirs(hf, prompts, new_tokens)[0]
    if mine != theirs:
        raise AssertionError(f"the engine's tokens differ from transformers' for {preset}; not timing")
    rates: dict[str, list[float]] = {"kvtier": [], "transformers": []}
    for r in range(rounds):
        for name, run, target in (("kvtier", _ours, model), ("transformers", _theirs, hf))[::(1 if r % 2 else -1)]:
            decode_s = run(target, prompts, new_tokens)[1] - run(target, prompts, 1)[1]
            rates[name].append(batch * (new_tokens - 1) / decode_s)
    return {"preset": preset, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "kvtier_tok_s": rates["kvtier"], "transformers_tok_s": rates["transformers"],
            "ratio_median": statistics.median(a / b for a, b in zip(rates["kvtier"], rates["transformers"])),
            "torch_threads": torch.get_num_threads()}
