"""`kvtier bench replay`: replay a synthetic multi-turn chat trace through device, host (and disk)
tiers, checking every block served, and print the hit rate per tier (no model: blocks only)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

from kvtier.cli.cache_flags import add_cache_flags, cache_config


def register(benches: Any) -> None:
    parser = benches.add_parser("replay", help="replay a synthetic multi-turn chat trace and print hit rates per tier")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_cache_flags(parser, device_blocks=64, host_blocks=48)
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    from kvtier.bench.replay import run_demo
    from kvtier.config import ModelConfig
    from kvtier.errors import KVTierError

    with tempfile.TemporaryDirectory(prefix="kvtier-replay-") as scratch:
        try:
            config = cache_config(args, ModelConfig.preset("tiny").kv_layout(block_size=16), scratch)
        except (ValueError, OSError) as exc:
            args.parser.error(str(exc))
        try:
            report = run_demo(config, args.conversations, args.turns)
        except KVTierError as exc:
            print(f"kvtier bench replay: error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"replayed {args.conversations} conversations x {args.turns} turns "
          f"({report['prompt_tokens']} prompt tokens, block_size {config.layout.block_size})")
    print(f"{'tier':<8}{'block hit rate':>16}")
    for tier, rate in report["hit_rate"].items():
        print(f"{tier:<8}{rate:>16.1%}")
    print(f"tokens served from cache: {report['cached_tokens']} ({report['token_hit_rate']:.1%}); "
          f"{report['verified_blocks']} blocks checked bit-identical; "
          f"{report['offloaded_blocks']} offloaded, {report['dropped_blocks']} dropped")
    return 0
