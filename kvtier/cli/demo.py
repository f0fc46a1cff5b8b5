"""`kvtier demo`: replay a synthetic multi-turn chat through device, host (and disk) tiers."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvtier.config import KVTierConfig


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="replay a synthetic multi-turn chat trace and print hit rates per tier")
    parser.add_argument("--config", metavar="FILE", help="a TOML file describing the cache (kvtier/config/parse.py); "
                        "replaces --device-blocks, --host-blocks, --disk and --no-disk")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--device-blocks", type=int, default=64)
    parser.add_argument("--host-blocks", type=int, default=48)
    parser.add_argument("--disk", metavar="DIR", help="disk tier folder (default: a temporary folder)")
    parser.add_argument("--no-disk", action="store_true", help="device and host tiers only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run, parser=parser)


def flags_config(args: argparse.Namespace, scratch: str) -> KVTierConfig:
    """The cache the flags describe: the tiny model's layout, a device pool, a host tier, a disk tier."""
    from kvtier.config import (
        DeviceTierConfig,
        DiskTierConfig,
        HostTierConfig,
        KVTierConfig,
        ModelConfig,
    )

    tiers: list[Any] = [HostTierConfig(num_blocks=args.host_blocks)]
    if not args.no_disk:
        tiers.append(DiskTierConfig(path=args.disk or scratch, capacity_bytes=256 << 20, fsync=False))
    return KVTierConfig(layout=ModelConfig.preset("tiny").kv_layout(block_size=16),
                        device=DeviceTierConfig(num_blocks=args.device_blocks), tiers=tuple(tiers))


def run(args: argparse.Namespace) -> int:
    from kvtier.config import KVTierConfig
    from kvtier.demo import run_demo
    from kvtier.errors import KVTierError

    with tempfile.TemporaryDirectory(prefix="kvtier-demo-") as scratch:
        try:
            config = KVTierConfig.from_toml(args.config) if args.config else flags_config(args, scratch)
        except (ValueError, OSError) as exc:
            args.parser.error(str(exc))
        try:
            report = run_demo(config, args.conversations, args.turns)
        except KVTierError as exc:
            print(f"kvtier demo: error: {exc}", file=sys.stderr)
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
