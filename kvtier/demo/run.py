"""The demo: a model answers a multi-turn chat on the tiered cache, and the run is checked and timed.

Conversations share a system prompt and a document; each turn's prompt continues the previous one.
The cache is small on purpose (device, a little host RAM, then disk), so turns find their history
spilled. Before the last round of turns the server "restarts": it persists what only memory held,
closes, and a new cache opens over the same disk folder, so that round's long prefixes come back
from disk. Three runs, in this order:

1. tiered: the chat on that cache;
2. resident: the same chat with every block kept on the device; every reply must equal run 1's
   (the same prefix reuse, so the same chunks are computed: equal replies mean the blocks that
   came back from host and disk were exactly the ones that went down);
3. recompute: each prompt that reused blocks in run 1, prefilled from nothing (its TTFT).

The first turn after the restart also has its floor measured: plain reads of the same object
files (kvtier/demo/floor.py), just before the turn.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import KVLayout, KVTierConfig
from kvtier.demo.chat import QUESTIONS, ChatTokens, Turn
from kvtier.demo.floor import plain_read_s, restored_paths
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.errors import KVTierError
from kvtier.model.decoder import Transformer
from kvtier.model.weights import fingerprint


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSettings:
    conversations: int = 2
    turns: int = 2  # per conversation; the restart comes before the last round
    document_tokens: int = 2048
    reply_tokens: int = 32
    max_batched_tokens: int = 2048  # prefill chunk per step

    def __post_init__(self) -> None:
        for name in ("conversations", "turns", "document_tokens", "reply_tokens", "max_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.conversations > len(QUESTIONS) or self.turns > len(QUESTIONS[0]):
            raise ValueError(f"the demo has questions for {len(QUESTIONS)} conversations of {len(QUESTIONS[0])} "
                             f"turns; got {self.conversations} x {self.turns}")

    def schedule(self) -> list[tuple[int, int]]:
        """(conversation, turn) in play order: round by round, each conversation once per round."""
        return [(c, t) for t in range(self.turns) for c in range(self.conversations)]

    @property
    def restart_at(self) -> int | None:
        """Index in the schedule of the first turn after the restart (None: a single round)."""
        return self.conversations * (self.turns - 1) if self.turns > 1 else None

    def device_blocks(self, chat: ChatTokens, block_size: int) -> int:
        """A device pool just big enough for the longest turn (its prompt and reply), so that the
        other conversations' blocks spill: the longest first prompt, then per later turn a reply
        and at most 40 tokens of template and question."""
        first = max(len(chat.first(QUESTIONS[c][0], c)) for c in range(self.conversations))
        longest = first + (self.turns - 1) * (self.reply_tokens + 40) + self.reply_tokens
        return -(-longest // block_size) + 1


@dataclass(slots=True)
class TurnResult:
    conversation: int
    turn: int
    prompt_tokens: int
    cached_tokens: int
    cached_blocks_by_tier: dict[str, int]
    ttft_s: float
    onload_s: float | None
    onloaded_bytes: int
    offloaded_bytes: int
    after_restart: bool
    reply: str
    reply_token_ids: list[int]
    resident_reply_token_ids: list[int] | None = None
    recompute_ttft_s: float | None = None
    floor_s: float | None = None


def play(model: Transformer, chat: ChatTokens, settings: DemoSettings, open_cache: Callable[[], TieredKVCache],
         *, restart_at: int | None, measure_floor: bool = False,
         progress: Callable[[str], None] = lambda _: None) -> tuple[list[TurnResult], list[list[int]]]:
    """Every turn of the schedule on caches from `open_cache` (a new one after `restart_at`), and
    the prompt each turn played."""
    engine_config = EngineConfig(max_num_seqs=1, max_num_batched_tokens=settings.max_batched_tokens)
    namespace = namespace_digest(fingerprint(model), None)
    cache = open_cache()
    engine = LLMEngine(model, cache, engine_config)
    history: dict[int, list[Turn]] = {}
    results, prompts = [], []
    try:
        for n, (c, t) in enumerate(settings.schedule()):
            if n == restart_at:
                progress("restart: persisting what only memory holds, then a new cache over the same disk")
                cache.persist()
                cache.close()
                cache = open_cache()
                engine = LLMEngine(model, cache, engine_config)
            question = QUESTIONS[c][t]
            prompt = chat.first(question, c) if t == 0 else chat.next(history[c], question)
            prompts.append(prompt)
            floor_s = None
            if measure_floor and n == restart_at:
                paths = restored_paths(cache, namespace, prompt)
                floor_s = plain_read_s(paths, cache.engine.num_workers) if paths else None
            onloaded, offloaded = cache.stats.onloaded_bytes, cache.stats.offloaded_bytes
            out = engine.generate([Request(request_id=f"c{c}t{t}", prompt_token_ids=tuple(prompt),
                                           max_tokens=settings.reply_tokens)])[0]
            if out.error is not None or out.ttft_s is None:
                raise KVTierError(f"turn {t + 1} of conversation {c + 1} failed: {out.error}")
            turn = Turn(c, t, question, prompt, list(out.token_ids), chat.text(out.token_ids))
            history.setdefault(c, []).append(turn)
            results.append(TurnResult(
                conversation=c, turn=t, prompt_tokens=len(prompt), cached_tokens=out.num_cached_tokens,
                cached_blocks_by_tier=dict(out.cached_blocks_by_tier), ttft_s=out.ttft_s, onload_s=out.onload_s,
                onloaded_bytes=cache.stats.onloaded_bytes - onloaded, offloaded_bytes=cache.stats.offloaded_bytes
                - offloaded, after_restart=restart_at is not None and n >= restart_at, reply=turn.reply_text,
                reply_token_ids=turn.reply, floor_s=floor_s))
            progress(f"conversation {c + 1} turn {t + 1}: {len(prompt)} prompt tokens, {out.num_cached_tokens} "
                     f"cached, TTFT {out.ttft_s:.2f} s")
    finally:
        cache.close()
    return results, prompts


def recompute_ttfts(model: Transformer, layout: KVLayout, settings: DemoSettings,
                    prompts: dict[int, list[int]]) -> dict[int, float]:
    """TTFT of each prompt prefilled from nothing (a salt no other request shares), same chunking;
    one engine over a pool that holds the longest, whose earlier blocks are simply dropped."""
    longest = max(len(p) for p in prompts.values())
    cache = TieredKVCache(layout, -(-(longest + 1) // layout.block_size) + 1)
    engine = LLMEngine(model, cache, EngineConfig(max_num_seqs=1, max_num_batched_tokens=settings.max_batched_tokens))
    ttfts = {}
    try:
        for n, prompt in prompts.items():
            salt = f"kvtier-demo-recompute-{n}"
            out = engine.generate([Request(request_id=salt, prompt_token_ids=tuple(prompt), max_tokens=1,
                                           cache_salt=salt)])[0]
            assert out.ttft_s is not None and out.num_cached_tokens == 0
            ttfts[n] = out.ttft_s
    finally:
        cache.close()
    return ttfts


def run_demo(model: Transformer, chat: ChatTokens, config: KVTierConfig, settings: DemoSettings,
             progress: Callable[[str], None] = lambda _: None,
             open_cache: Callable[[KVTierConfig], TieredKVCache] = TieredKVCache.from_config) -> dict[str, Any]:
    """The three runs and the report (see the module docstring). `open_cache` opens run 1's tiered
    cache from `config` (a rank of a parallel layout passes one that agrees with the other ranks)."""
    started = time.perf_counter()
    progress("run 1 of 3: the chat on the tiered cache")
    turns, prompts = play(model, chat, settings, lambda: open_cache(config),
                          restart_at=settings.restart_at, measure_floor=True, progress=progress)
    progress("run 2 of 3: the same chat with every block resident on the device")
    everything = settings.device_blocks(chat, config.layout.block_size) * len(settings.schedule())
    resident, _ = play(model, chat, settings, lambda: TieredKVCache(config.layout, everything), restart_at=None)
    for turn, other in zip(turns, resident):
        turn.resident_reply_token_ids = other.reply_token_ids
    progress("run 3 of 3: each prompt that reused blocks, recomputed from nothing")
    reused = {n: prompts[n] for n, turn in enumerate(turns) if turn.cached_tokens}
    for n, ttft in (recompute_ttfts(model, config.layout, settings, reused) if reused else {}).items():
        turns[n].recompute_ttft_s = ttft
    return _report(model, config, settings, turns, time.perf_counter() - started)


def _report(model: Transformer, config: KVTierConfig, settings: DemoSettings, turns: list[TurnResult],
            elapsed_s: float) -> dict[str, Any]:
    reused = [t for t in turns if t.recompute_ttft_s is not None]
    restored = next((t for t in turns if t.after_restart), None)
    hits: dict[str, int] = {}
    for t in turns:
        for tier, n in t.cached_blocks_by_tier.items():
            hits[tier] = hits.get(tier, 0) + n
    return {
        "model": model.config.name,
        "outputs_match": all(t.reply_token_ids == t.resident_reply_token_ids for t in turns),
        "speedup": (sum(t.recompute_ttft_s or 0.0 for t in reused) / sum(t.ttft_s for t in reused)) if reused else None,
        "restore_s": restored.onload_s if restored else None,
        "restore_floor_s": restored.floor_s if restored else None,
        "restored_tokens": restored.cached_tokens if restored else 0,
        "restore_ttft_speedup": (restored.recompute_ttft_s / restored.ttft_s)
        if restored and restored.recompute_ttft_s else None,
        "blocks_hit_by_tier": hits,
        "block_bytes": config.layout.page_size_bytes,
        "settings": asdict(settings),
        "cache": {"device_blocks": config.device.num_blocks,
                  "tiers": [{"kind": type(t).__name__, **{k: v for k, v in asdict(t).items() if k != "path"}}
                            for t in config.tiers]},
        "elapsed_s": elapsed_s,
        "turns": [asdict(t) for t in turns],
    }
