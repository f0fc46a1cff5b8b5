"""`kvtier demo`: replays a synthetic multi-turn trace through the tiered cache (filled in below)."""
from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="replay a synthetic multi-turn chat trace and print hit rates per tier")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("demo lands with the block manager (issue 2)")
