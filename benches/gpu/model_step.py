"""One decode step of the demo model's shape (SmolLM2-135M: 30 layers, 9 query and 3 KV heads,
head_dim 64, tied embeddings) at batch 32 and 4k context, against its roofline: the weights plus
every sequence's K/V read once, over the card's measured copy bandwidth.

Seeded random weights (the shape is what the time depends on) and random K/V in the pool: the
step runs the real decoder, `kvtier.ops` and the paged pool; nothing is prefilled first.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benches.gpu.measure import Timer
from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import ModelConfig
from kvtier.model.batch import Chunk, ForwardBatch
from kvtier.model.weights import random_model
from kvtier.types import SeqId


def model_step_case(dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return {"preset": "tiny", "batch": 2, "context": 40, "dtype": torch.float32}
    return {"preset": "smollm2-135m", "batch": 32, "context": 4096, "dtype": torch.bfloat16}


def bench_model_step(case: dict[str, Any], device: torch.device, timer: Timer, d2d_gbps: float,
                     block_size: int = 16) -> dict[str, Any]:
    config = dataclasses.replace(ModelConfig.preset(case["preset"]), dtype=case["dtype"])
    model = random_model(config, device=device)
    batch, context = case["batch"], case["context"]
    per_seq = -(-context // block_size)
    cache = TieredKVCache(config.kv_layout(block_size), batch * per_seq, device=device)
    cache.pool.kv_cache.normal_(0, 1)
    chunks = []
    for b in range(batch):
        tokens = [(7 * i + b) % config.vocab_size for i in range(context)]
        seq = cache.allocate(SeqId(f"s{b}"), tokens, namespace_digest(f"gpu-check-step-{b}", None))
        chunks.append(Chunk(seq.block_ids, context - 1, tokens[-1:]))
    step = ForwardBatch.build(chunks, block_size, device)
    logits = model(step, cache.pool)
    if logits.shape != (batch, config.vocab_size) or not bool(torch.isfinite(logits).all()):
        raise AssertionError(f"model step: logits {tuple(logits.shape)} not finite or misshapen")
    ms = timer(lambda: model(step, cache.pool))
    item = case["dtype"].itemsize
    weight_bytes = sum(p.numel() for p in model.parameters()) * item  # NOTE: the tied LM head counted once
    kv_bytes = batch * context * config.num_layers * 2 * config.num_kv_heads * config.head_dim * item
    roofline_ms = (weight_bytes + kv_bytes) / (d2d_gbps * 1e9) * 1e3
    return {"name": f"{case['preset']} decode step b{batch} ctx{context}", "step_ms": ms,
            "weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "roofline_ms": roofline_ms,
            "fraction_of_roofline": roofline_ms / ms, "dtype": str(case["dtype"])}
