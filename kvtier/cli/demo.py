"""`kvtier demo`: replay a synthetic multi-turn chat through device, host (and disk) tiers."""
from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from kvtier.config import ModelConfig


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="replay a synthetic multi-turn chat trace and print hit rates per tier")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--device-blocks", type=int, default=64)
    parser.add_argument("--host-blocks", type=int, default=48)
    parser.add_argument("--disk", metavar="DIR", help="disk tier folder (default: a temporary folder)")
    parser.add_argument("--no-disk", action="store_true", help="device and host tiers only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kvtier.demo import DemoConfig, run_demo

    layout = ModelConfig.preset("tiny").kv_layout(block_size=16)
    with tempfile.TemporaryDirectory(prefix="kvtier-demo-") as scratch:
        disk = None if args.no_disk else (args.disk or scratch)
        config = DemoConfig(layout=layout, num_device_blocks=args.device_blocks, num_host_blocks=args.host_blocks,
                            num_conversations=args.conversations, num_turns=args.turns, disk_path=disk)
        report = run_demo(config)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"replayed {args.conversations} conversations x {args.turns} turns "
          f"({report['prompt_tokens']} prompt tokens, block_size {layout.block_size})")
    print(f"{'tier':<8}{'block hit rate':>16}")
    for tier, rate in report["hit_rate"].items():
        print(f"{tier:<8}{rate:>16.1%}")
    print(f"tokens served from cache: {report['cached_tokens']} ({report['token_hit_rate']:.1%}); "
          f"{report['verified_blocks']} blocks checked bit-identical; "
          f"{report['offloaded_blocks']} offloaded, {report['dropped_blocks']} dropped")
    return 0
