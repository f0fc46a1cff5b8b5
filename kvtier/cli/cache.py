"""`kvtier cache stat|verify|gc PATH`: inspect, check and trim a disk-tier folder (kvtier.tiers.disk.fsck)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

REMEDIES = {
    errno.EACCES: "permission denied; run as the user that owns the tier, or check the owner and mode of its folders",
    errno.EPERM: "permission denied; run as the user that owns the tier, or check the owner and mode of its folders",
    errno.EROFS: "the filesystem is read-only; remount it read-write to trim or repair",
}


def byte_count(text: str) -> int:
    """An argparse type: `1500000`, `512MiB`, `2G`, `1.5GiB` -> bytes (a fraction of a byte is refused)."""
    from kvtier.config.parse import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: Any) -> None:
    parser = commands.add_parser("cache", help="inspect, verify or trim a disk-tier folder (its shards/ folders too)")
    actions = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    stat = actions.add_parser("stat", help="objects and bytes per namespace, temporaries, ignored entries, quarantine")
    verify = actions.add_parser("verify", help="read and check every object (exit 1 if any is damaged or unreadable)")
    verify.add_argument("--repair", action="store_true",
                        help="move damaged objects to PATH/quarantine (unreadable ones are left alone)")
    gc = actions.add_parser("gc", help="remove the quarantine, then least recently written objects, down to a budget")
    gc.add_argument("--to", dest="to_bytes", type=byte_count, required=True, metavar="BYTES",
                    help="budget for what is left (e.g. 500000000, 512MiB, 2G)")
    for sub in (stat, verify, gc):
        sub.add_argument("path", metavar="PATH", help="the disk tier's folder")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kvtier.tiers.disk import fsck

    if not os.path.isdir(args.path):
        print(f"kvtier cache: {args.path} is not a folder", file=sys.stderr)
        return 2
    try:
        if args.cache_command == "stat":
            report = fsck.stat_folder(args.path)
        elif args.cache_command == "verify":
            report = fsck.verify_folder(args.path, repair=args.repair)
        else:
            report = fsck.gc_folder(args.path, args.to_bytes)
    except OSError as exc:
        remedy = REMEDIES.get(exc.errno or 0, "check the device and the mount")
        print(f"kvtier cache {args.cache_command}: {exc}; {remedy}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    if args.cache_command == "verify":
        folders = [report, *report["shards"].values()]
        return 1 if any(r["unreadable"] or (r["corrupt"] and not args.repair) for r in folders) else 0
    return 0


def _print(report: dict[str, Any], indent: str = "") -> None:
    for key, value in report.items():
        if key not in ("namespaces", "corrupt_paths", "unreadable_paths", "reasons", "shards"):
            print(f"{indent}{key:>16}: {value}")
    for namespace, entry in report.get("namespaces", {}).items():
        print(f"{indent}  namespace {namespace[:16]}…: {entry['objects']} objects, {entry['bytes']} bytes")
    for reason, count in report.get("reasons", {}).items():
        print(f"{indent}  {count} corrupt: {reason}")
    for path in report.get("corrupt_paths", []):
        print(f"{indent}  corrupt: {path}")
    for path in report.get("unreadable_paths", []):
        print(f"{indent}  unreadable (left alone): {path}")
    for name, shard in report.get("shards", {}).items():
        print(f"{indent}  shard {name}:")
        _print(shard, indent + "    ")
