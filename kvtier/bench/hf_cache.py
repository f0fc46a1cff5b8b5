"""transformers' `generate` with TieredCache against DynamicCache on the same model, in one run.

Four caches, greedy, the same prompt, tokens checked equal before anything is timed, rounds
alternating the order: DynamicCache; TieredCache all resident; TieredCache spilling to a disk
folder with a device budget of a quarter of the context (blocks of every layer; at least one
layer's whole context), no host tier; and the same with the next layer prefetched (off by default
on CPU).
"""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from kvtier.bench.decode import hf_twin
from kvtier.config import ModelConfig
from kvtier.model.weights import random_model


def hf_cache_bench(preset: str, prompt_len: int, new_tokens: int, rounds: int,
                   folder: str | None = None, block_size: int = 16) -> dict[str, Any]:
    import transformers

    from kvtier.integrations.hf import TieredCache

    model = hf_twin(random_model(dataclasses.replace(ModelConfig.preset(preset), eos_token_ids=()), seed=0))
    config = model.config
    ids = torch.tensor([[(13 * i + 7) % config.vocab_size for i in range(prompt_len)]])
    row_blocks = -(-(prompt_len + new_tokens) // block_size)  # one layer of the one row
    context_blocks = config.num_hidden_layers * row_blocks
    budget = max(context_blocks // 4, row_blocks + 1)  # NOTE: a layer's row must fit at once (few-layer models)
    path = tempfile.mkdtemp(prefix="kvtier-hf-bench-", dir=folder)
    makers: dict[str, Callable[[], Any]] = {
        "dynamic": lambda: transformers.DynamicCache(config=config),
        "tiered_resident": lambda: TieredCache(config, block_size=block_size),
        "tiered_disk_quarter": lambda: TieredCache(config, device_blocks=budget, disk_dir=tempfile.mkdtemp(dir=path),
                                                   fsync=False, block_size=block_size),
        "tiered_disk_quarter_prefetch": lambda: TieredCache(config, device_blocks=budget, fsync=False,
                                                            disk_dir=tempfile.mkdtemp(dir=path), block_size=block_size,
                                                            prefetch_layers=True),
    }

    def run(name: str) -> tuple[torch.Tensor, float, float]:
        """Tokens, wall seconds, and CPU seconds of every thread (less sensitive to a shared host's steal)."""
        cache = makers[name]()
        try:
            start, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = model.generate(ids, cache=cache, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=0)
            return out, time.perf_counter() - start, time.process_time() - cpu
        finally:
            if hasattr(cache, "close"):
                cache.close()

    try:
        reference = run("dynamic")[0]
        for name in makers:
            if not torch.equal(run(name)[0], reference):
                raise AssertionError(f"{name} gave other tokens than DynamicCache; not timing")
        seconds: dict[str, list[float]] = {name: [] for name in makers}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in makers}
        order = list(makers)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                _, wall, cpu = run(name)
                seconds[name].append(wall)
                cpu_seconds[name].append(cpu)
    finally:
        shutil.rmtree(path, ignore_errors=True)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        return {name: statistics.median(a / b for a, b in zip(times[name], times["dynamic"]))
                for name in makers if name != "dynamic"}

    return {"preset": preset, "prompt_len": prompt_len, "new_tokens": new_tokens, "block_size": block_size,
            "context_blocks": context_blocks, "device_budget_blocks": budget, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "ratio_to_dynamic_median": ratios(seconds),
            "cpu_ratio_to_dynamic_median": ratios(cpu_seconds), "torch_threads": torch.get_num_threads()}
