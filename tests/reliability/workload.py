"""The suite's workload: a seeded tiny model, prompts sharing prefixes, a device pool small enough
that blocks spill; each run in a thread with a deadline (a hang is counted, not waited for)."""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from kvtier.cache import TieredKVCache
from kvtier.config import ModelConfig
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.model.weights import random_model
from kvtier.tiers.base import TierStore
from tests.reliability.counts import Counts

CONFIG = dataclasses.replace(ModelConfig.preset("tiny"), eos_token_ids=())
MODEL = random_model(CONFIG, seed=0)
LAYOUT = CONFIG.kv_layout(block_size=4)
_SHARED = [(11 * i + 3) % 250 for i in range(24)]
PROMPTS = [_SHARED + [(7 * i + p) % 250 for i in range(9 + 5 * p)] for p in range(6)]
DEVICE_BLOCKS = 24
DEADLINE_S = 120.0


def requests() -> list[Request]:
    return [Request(request_id=f"r{i}", prompt_token_ids=tuple(p), max_tokens=12) for i, p in enumerate(PROMPTS)]


def run(tiers: Sequence[TierStore] = (), write_through: Sequence[TierStore] = (),
        device_blocks: int = DEVICE_BLOCKS) -> tuple[list[Any] | None, Counts]:
    """The outputs (None on a crash or a hang) and the crash/hang counts of one engine over `tiers`."""
    cache = TieredKVCache(LAYOUT, device_blocks, list(tiers), write_through=list(write_through))
    engine = LLMEngine(MODEL, cache, EngineConfig(max_num_batched_tokens=16))
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["outputs"] = engine.generate(requests())
            cache.flush()
        except BaseException as exc:  # NOTE: counted as a crash, reported below
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    counts = Counts()
    if thread.is_alive():
        counts.hangs = 1
        return None, counts
    cache.close()
    if "error" in result:
        counts.crashes = 1
        print(f"crash: {result['error']!r}")
        return None, counts
    return result["outputs"], counts


_REFERENCE: list[Any] = []


def reference() -> list[list[int]]:
    """Token ids with every block resident (a pool that never evicts)."""
    if not _REFERENCE:
        outputs, _ = run(device_blocks=1024)
        assert outputs is not None
        _REFERENCE.extend(o.token_ids for o in outputs)
    return _REFERENCE


def judge(outputs: list[Any] | None, counts: Counts, clean_cached: Sequence[int] | None = None) -> Counts:
    """Count wrong outputs, and the blocks recomputed against a fault-free run's cached tokens."""
    if outputs is None:
        counts.wrong += len(PROMPTS)
        return counts
    counts.wrong += sum(o.token_ids != want for o, want in zip(outputs, reference()))
    if clean_cached is not None:
        counts.recomputed += sum(max(0, c - o.num_cached_tokens) for o, c in zip(outputs, clean_cached)) \
            // LAYOUT.block_size
    return counts
