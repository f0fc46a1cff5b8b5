"""The `kvtier` command: builds the parser from one module per command and dispatches."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvtier.cli import bench, cache, demo, generate, info

COMMAND_MODULES = [demo, generate, info, bench, cache]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvtier", description="Tiered KV-cache blocks for LLM inference: GPU, host, NVMe, NFS, Redis.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
