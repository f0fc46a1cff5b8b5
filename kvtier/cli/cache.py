"""`kvtier cache stat|verify|gc PATH`: inspect, check and trim a disk-tier folder (kvtier.tiers.disk_scan)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """`1500000`, `512MiB`, `2G`, `1.5GiB` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?(?:ib)?)?\s*", text.lower())
    if match is None or (match.group(2) or "") not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (examples: 1000000, 512MiB, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def register(commands: Any) -> None:
    parser = commands.add_parser("cache", help="inspect, verify or trim a disk-tier folder")
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    stat = actions.add_parser("stat", help="objects and bytes per namespace")
    verify = actions.add_parser("verify", help="read and check every object")
    verify.add_argument("--repair", action="store_true", help="move corrupt objects to PATH/quarantine")
    gc = actions.add_parser("gc", help="remove least recently written objects down to a byte budget")
    gc.add_argument("--to", dest="to_bytes", type=parse_bytes, required=True, metavar="BYTES",
                    help="budget for the objects left (e.g. 500000000, 512MiB, 2G)")
    for sub in (stat, verify, gc):
        sub.add_argument("path", metavar="PATH", help="the disk tier's folder")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kvtier.tiers import disk_scan

    if not os.path.isdir(args.path):
        print(f"kvtier cache: {args.path} is not a folder", file=sys.stderr)
        return 2
    if args.cache_command == "stat":
        report = disk_scan.stat_folder(args.path)
    elif args.cache_command == "verify":
        report = disk_scan.verify_folder(args.path, repair=args.repair)
    else:
        report = disk_scan.gc_folder(args.path, args.to_bytes)
    _print(report, args.json)
    failed = args.cache_command == "verify" and report["corrupt"] and not args.repair
    return 1 if failed else 0


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    namespaces = report.get("namespaces", {})
    for key, value in report.items():
        if key not in ("namespaces", "corrupt_paths", "reasons"):
            print(f"{key:>16}: {value}")
    for namespace, entry in namespaces.items():
        print(f"  namespace {namespace[:16]}…: {entry['objects']} objects, {entry['bytes']} bytes")
    for reason, count in report.get("reasons", {}).items():
        print(f"  {count} corrupt: {reason}")
    for path in report.get("corrupt_paths", []):
        print(f"  corrupt: {path}")
