"""Decode throughput of the engine against transformers' `generate` on the same weights, in one run.

Two scenarios, both greedy with no EoS, both sides given the same requests, their tokens checked
equal before anything is timed; rounds alternate which side runs first.

- `equal`: one batch of equal-length prompts and equal max_tokens. Decode time is a full
  generation's wall time less a one-token generation's (the prefill), so tokens/s counts generated
  tokens after the first.
- `varied`: twice `batch` requests of varied prompt lengths and max_tokens. The engine runs at most
  `batch` at once, retiring finished ones and admitting the next; transformers takes them in
  arrival order in static batches of `batch`, left-padded with an attention mask, each generating
  until its longest request is done (a row's tokens past its max_tokens are dropped). Tokens/s is
  every request's max_tokens over the whole wall time, prefill included, on both sides.

transformers runs as configured by default (sdpa attention, a dynamic KV cache), in float32 like ours.
"""
from __future__ import annotations

import dataclasses
import random
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


def _pool_blocks(prompts: list[list[int]], max_tokens: list[int], block_size: int) -> int:
    """Device blocks for every request at once, plus one spare each: what the workload can touch.

    NOTE: not a fixed large pool: its zero pages are first touched inside the timed run.
    """
    return sum(-(-(len(p) + n) // block_size) + 1 for p, n in zip(prompts, max_tokens))


def _ours(model: Any, prompts: list[list[int]], max_tokens: list[int],
          max_num_seqs: int) -> tuple[list[list[int]], float]:
    cache = TieredKVCache(model.config.kv_layout(16), _pool_blocks(prompts, max_tokens, 16))
    engine = LLMEngine(model, cache, EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=8192))
    requests = [Request(request_id=str(i), prompt_token_ids=tuple(p), max_tokens=n)
                for i, (p, n) in enumerate(zip(prompts, max_tokens))]
    start = time.perf_counter()
    outputs = engine.generate(requests)
    return [o.token_ids for o in outputs], time.perf_counter() - start


def _theirs(hf: Any, prompts: list[list[int]], max_tokens: list[int],
            max_num_seqs: int) -> tuple[list[list[int]], float]:
    """Static batches of `max_num_seqs` in order, left-padded with an attention mask."""
    tokens: list[list[int]] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), max_num_seqs):
        group, limits = prompts[first:first + max_num_seqs], max_tokens[first:first + max_num_seqs]
        width = max(len(p) for p in group)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(limits), min_new_tokens=max(limits),
                              do_sample=False, pad_token_id=0)
        tokens += [row[:n] for row, n in zip(out[:, width:].tolist(), limits)]
    return tokens, time.perf_counter() - start


def _workload(scenario: str, batch: int, prompt_len: int, new_tokens: int,
              vocab: int) -> tuple[list[list[int]], list[int]]:
    """Prompts and max_tokens: `batch` equal ones, or 2 x `batch` of lengths drawn (seeded) around them."""
    if scenario == "equal":
        lens, limits = [prompt_len] * batch, [new_tokens] * batch
    elif scenario == "varied":
        rng = random.Random(batch)
        lens = [rng.randint(max(1, prompt_len // 4), prompt_len) for _ in range(2 * batch)]
        limits = [rng.randint(max(2, new_tokens // 4), 2 * new_tokens) for _ in range(2 * batch)]
    else:
        raise ValueError(f"scenario must be 'equal' or 'varied', got {scenario!r}")
    return [[(13 * i + 7 * b) % vocab for i in range(n)] for b, n in enumerate(lens)], limits


def _rate(run: Any, target: Any, scenario: str, prompts: list[list[int]], limits: list[int], batch: int) -> float:
    """Generated tokens per second of one run (`equal`: after the first token; `varied`: all of them)."""
    if scenario == "varied":
        return sum(limits) / float(run(target, prompts, limits, batch)[1])
    decode_s = float(run(target, prompts, limits, batch)[1]) - float(run(target, prompts, [1] * len(prompts), batch)[1])
    return sum(n - 1 for n in limits) / decode_s


def decode_bench(preset: str, batch: int, prompt_len: int, new_tokens: int, rounds: int,
                 scenario: str = "equal") -> dict[str, Any]:
    model = random_model(dataclasses.replace(ModelConfig.preset(preset), eos_token_ids=()), seed=0)
    hf = hf_twin(model)
    prompts, limits = _workload(scenario, batch, prompt_len, new_tokens, model.config.vocab_size)
    if _ours(model, prompts, limits, batch)[0] != _theirs(hf, prompts, limits, batch)[0]:
        raise AssertionError(f"the engine's tokens differ from transformers' for {preset} ({scenario}); not timing")
    rates: dict[str, list[float]] = {"kvtier": [], "transformers": []}
    for r in range(rounds):
        for name, run, target in (("kvtier", _ours, model), ("transformers", _theirs, hf))[::(1 if r % 2 else -1)]:
            rates[name].append(_rate(run, target, scenario, prompts, limits, batch))
    return {"preset": preset, "scenario": scenario, "batch": batch, "num_requests": len(prompts),
            "prompt_lens": [len(p) for p in prompts], "max_tokens": limits,
            "kvtier_tok_s": rates["kvtier"], "transformers_tok_s": rates["transformers"],
            "ratio_median": statistics.median(a / b for a, b in zip(rates["kvtier"], rates["transformers"])),
            "torch_threads": torch.get_num_threads()}
